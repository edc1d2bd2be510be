"""Direct invocations (``POST /functions/NAME/invoke``): a function run once on an object, by a worker.

A direct invocation is a job of its own one-step pipeline, made up on the
spot and named ``_invoke.MODE.FUNCTION.ID`` (a name no configured pipeline
can have, so it never matches an upload): every service knows such a
pipeline by its name (:class:`DirectInvocations`, a source of the
service's pipelines), so workers run it like any step:
warm runners, limits, reserved concurrency, attempts, logs and metering. A
synchronous one is not retried (as Lambda retries none); an asynchronous one
gets the function's retries. What the handler writes through
``context.output`` goes to ``functions.bucket`` under
``invocations/FUNCTION/KEY/``.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

from fileproc.rules import Match, Output, Pipeline, Step

if TYPE_CHECKING:
    from fileproc.service import Service
    from fileproc.state import Job

PREFIX = "_invoke."
MODES = ("sync", "async")


def is_direct(pipeline: str) -> bool:
    return pipeline.startswith(PREFIX)


def _made_up(name: str, bucket: str) -> Pipeline | None:
    mode, _, rest = name.removeprefix(PREFIX).partition(".")
    function = rest.rpartition(".")[0]
    if mode not in MODES or not function:
        return None
    step = Step(function=function, retries=0 if mode == "sync" else None)
    # Built without validation: the name is one no configured pipeline may take.
    return Pipeline.model_construct(
        name=name, match=Match.model_construct(bucket="", events=[]), steps=[step],
        output=Output(bucket=bucket, key=f"invocations/{function}/{{key}}/{{name}}"))


class DirectInvocations:
    """The made-up pipeline of each direct invocation, by its name (a source of the service's pipelines).

    It never matches an event: the service matches events against the
    configured pipelines only.
    """

    def __init__(self, invocation_bucket: str) -> None:
        self._bucket = invocation_bucket

    def get(self, name: str) -> Pipeline | None:
        return _made_up(name, self._bucket) if is_direct(name) else None


def submit(service: Service, function: str, bucket: str, key: str, *, mode: str = "sync") -> Job:
    """Queue ``function`` on ``bucket/key`` for a worker; the job that tracks it.

    FunctionNotFound for an unknown function, ObjectNotFound for a missing object.
    """
    from fileproc.objects import event_for
    from fileproc.runtime import outbox
    from fileproc.state import Send

    service.spec(Step(function=function))  # an unknown function fails here, not in a worker
    info = service.storage.head(bucket, key)
    event = event_for(bucket, key, info, source="invoke")
    name = f"{PREFIX}{mode}.{function}.{uuid.uuid4().hex[:16]}"
    service.storage.ensure_bucket(service.settings.functions.bucket)
    ((job, _),) = service.db.create_jobs([(name, event)], sending=True)
    outbox.send(service, [Send(job.id, 0, name)])
    return job


def wait(service: Service, job_id: int, timeout: float) -> Job | None:
    """The job once it finished, or as it is after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    pause = 0.01
    while True:
        job = service.db.get_job(job_id)
        if job is None or job.finished or time.monotonic() > deadline:
            return job
        time.sleep(pause)
        pause = min(pause * 1.5, 0.25)


def describe(job: Job) -> dict[str, Any]:
    """What the caller of a direct invocation sees: status, the handler's result, its log."""
    last = job.attempts[-1] if job.attempts else None
    function = job.pipeline.removeprefix(PREFIX).partition(".")[2].rpartition(".")[0]
    return {"invocation": job.id, "function": function, "status": job.status,
            "request_id": f"{job.id}-{last.step_index}-{last.id}" if last else None,
            "result": last.result if last else None, "error": job.error, "log": last.log if last else None,
            "version": last.version if last else None, "attempts": len(job.attempts),
            "outputs": [{"bucket": o.bucket, "key": o.key, "size": o.size} for o in job.outputs]}


__all__ = ["MODES", "PREFIX", "DirectInvocations", "describe", "is_direct", "submit", "wait"]
