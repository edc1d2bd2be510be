"""The ``registered`` kind of function: the built-ins, entry points and ``functions.paths`` handlers.

Its runners are forks of the worker, warm with its libraries; each runs
:func:`~fileproc.runtime.invoke.invoke` for every step it is sent. Its
steps keep the defaults of :class:`~fileproc.functions.kinds.StepPolicy`:
exponential backoff, no maximum event age, nothing recorded besides the
outcome. (The ``deployed`` kind is :mod:`fileproc.serverless.stepping`.)
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fileproc.functions.aws import key_variables, store_variables
from fileproc.functions.kinds import StepPolicy
from fileproc.functions.steps import ChildResult, RunnerStart, StepRequest
from fileproc.runtime.invoke import invoke
from fileproc.runtime.pool import Retire, warm_hook
from fileproc.sandbox.isolation import runner_tmp

if TYPE_CHECKING:
    from fileproc.config import Settings
    from fileproc.functions import FunctionSpec
    from fileproc.service import Service
    from fileproc.state import Job

REGISTERED = "registered"


class RegisteredKind:
    """Functions the operator installed: run in forks of the worker, with fileproc's own store keys."""

    name = REGISTERED
    report_level = logging.DEBUG  # a built-in's REPORT line only when debugging: the console shows jobs
    step_scratch = True  # (context.scratch_dir)

    def __init__(self, service: Service) -> None:
        self.service = service
        self._policy = StepPolicy()

    def start(self, spec: FunctionSpec, request: StepRequest) -> RunnerStart:
        service = self.service

        def work(step: StepRequest) -> Any:  # runs in the runner, for every step it is sent
            outcome = invoke(service, step, spec)
            if (outcome.get("error") or {}).get("kind") == "memory":  # the handler reported a MemoryError
                return Retire(outcome, f"ran out of memory (limit {step.memory_mb} MB)")
            return outcome

        return RunnerStart(request, work=work, warm=warm_up(service.settings, spec))

    def policy(self, spec: FunctionSpec, job: Job, request_id: str) -> StepPolicy:
        return self._policy

    def unfinished(self, spec: FunctionSpec, result: ChildResult, request: StepRequest) -> ChildResult:
        return result  # a forked runner's output is the worker's own log


def warm_up(settings: Settings, spec: FunctionSpec) -> Callable[[], None]:
    """What a new runner of a registered function does before its first step.

    It gets the standard AWS variables pointing boto3 at the configured
    store, with fileproc's own keys (it is a fork of the worker, which
    holds them anyway: its code is the operator's), then its module's
    ``warm()`` hook runs. (A deployed function's runner is not forked and
    gets credentials of its own.)
    """
    module_hook = warm_hook(spec.handler)
    variables = store_variables(settings) | key_variables(runner_store(settings))

    def warm_registered() -> None:
        os.environ.update(variables)
        if module_hook is not None:
            module_hook()

    return warm_registered


def runner_store(settings: Settings) -> dict[str, Any]:
    """How a runner opens ``context.storage`` (``bootstrap.open_storage``); on S3 with fileproc's keys."""
    if settings.storage.backend == "s3":
        return {"backend": "s3", "endpoint": settings.storage.endpoint, "secure": settings.storage.secure,
                "access_key": settings.storage.access_key.get_secret_value(),
                "secret_key": settings.storage.secret_key.get_secret_value(), "region": settings.storage.region or None}
    buckets = str(settings.buckets_dir)
    return dict(_local_store(buckets, "" if os.path.isabs(buckets) else os.getcwd()))


@functools.lru_cache(maxsize=16)
def _local_store(buckets_dir: str, cwd: str) -> tuple[tuple[str, str], ...]:
    # Resolved once per folder (and working directory): a stream's batches ask for it hundreds of times a second.
    buckets = Path(buckets_dir).resolve()
    return (("backend", "local"), ("buckets", str(buckets)), ("tmp", str(runner_tmp(buckets))))


__all__ = ["REGISTERED", "RegisteredKind", "runner_store", "warm_up"]
