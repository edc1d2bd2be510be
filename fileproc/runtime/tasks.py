"""The Celery task. Thin on purpose: the work is in :func:`runner.run_step`."""

from __future__ import annotations

from typing import Any

from celery import Task
from celery.signals import worker_process_init, worker_ready

from fileproc.runtime import leases
from fileproc.runtime.app import RUN_STEP, celery_app
from fileproc.runtime.outbox import Relay, database_down_everywhere
from fileproc.runtime.runner import run_step
from fileproc.service import Service

_service: Service | None = None
_relay_thread: Relay | None = None


def bind_service(service: Service) -> None:
    """Give the task the service it runs in (the worker does this at start)."""
    global _service
    _service = service
    # Steps go on through an outage of the database that nobody can reach (see runtime/leases.py).
    leases.watch_outages(database_down_everywhere)


@worker_process_init.connect
def _after_fork(**_: Any) -> None:
    if _service is not None:
        _service.after_fork()


@worker_ready.connect
def _relay(**_: Any) -> None:
    # Every process that can relays the outbox: a worker alone (no API nearby) still
    # sends retries, next steps that missed the broker, and steps of dead workers.
    global _relay_thread
    if _service is not None and _relay_thread is None:
        _relay_thread = Relay(_service).start()


@celery_app.task(name=RUN_STEP, bind=True, acks_late=True, reject_on_worker_lost=True)
def run_step_task(self: Task, job_id: int, step_index: int, *_: Any, **__: Any) -> str:
    """Run one step. Retries are not Celery's: the outbox sends a retried step when it is due.

    Extra arguments are ignored, so messages of another fileproc version still run.
    """
    if _service is None:
        raise RuntimeError("the worker started without a service (use `fileproc worker`)")
    return run_step(_service, job_id, step_index, worker=self.request.hostname or "worker").status
