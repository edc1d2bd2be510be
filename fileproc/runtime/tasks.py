"""The Celery task. Thin on purpose: the work is in :func:`runner.run_step`."""

from __future__ import annotations

from typing import Any

from celery import Task
from celery.signals import worker_process_init

from fileproc.runtime.app import RUN_STEP, celery_app
from fileproc.runtime.runner import run_step
from fileproc.service import Service

_service: Service | None = None


def bind_service(service: Service) -> None:
    """Give the task the service it runs in (the worker does this at start)."""
    global _service
    _service = service


@worker_process_init.connect
def _after_fork(**_: Any) -> None:
    if _service is not None:
        _service.after_fork()


@celery_app.task(name=RUN_STEP, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None)
def run_step_task(self: Task, job_id: int, step_index: int) -> str:
    """Run one step; a retry (backoff, or a step held by another worker) is a Celery retry."""
    if _service is None:
        raise RuntimeError("the worker started without a service (use `fileproc worker`)")
    outcome = run_step(_service, job_id, step_index, worker=self.request.hostname or "worker")
    if outcome.retry_in is not None:
        raise self.retry(countdown=outcome.retry_in)
    return outcome.status
