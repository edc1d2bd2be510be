"""``run_step``: one step of one job, from claim to recorded result.

Plain functions, testable without a broker; the Celery task only calls
:func:`run_step` and turns ``Outcome.retry_in`` into a Celery retry.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from fileproc.dispatch import enqueue
from fileproc.errors import (
    TRANSIENT,
    ConfigError,
    FunctionNotFound,
    InvalidInput,
    ObjectNotFound,
    PermanentError,
    StorageError,
)
from fileproc.events import ObjectEvent
from fileproc.functions import Context, FunctionSpec, InputObject, OutputWriter, remove_scratch, scratch_dir
from fileproc.rules import PROVENANCE_PIPELINE, Pipeline, Step, render_key
from fileproc.runtime.sandbox import run_in_child
from fileproc.service import Service
from fileproc.state import Job, Output
from fileproc.storage import ObjectInfo, open_storage

log = logging.getLogger(__name__)

LEASE_GRACE_SECONDS = 5.0
"""How long past its timeout a step's lease lasts, for the worker to record the end."""

PERMANENT: tuple[type[Exception], ...] = (InvalidInput, PermanentError, FunctionNotFound, ConfigError)


@dataclass(frozen=True)
class Outcome:
    """What became of one delivery of a step message."""

    status: str  # succeeded, failed, skipped, next (the next step is queued), retry, busy, stale
    detail: str = ""
    retry_in: float | None = None


@dataclass(frozen=True)
class Limits:
    timeout: float
    memory_mb: int
    retries: int


def limits_for(spec: FunctionSpec, step: Step) -> Limits:
    return Limits(
        timeout=step.timeout or spec.timeout,
        memory_mb=step.memory_mb or spec.memory_mb,
        retries=spec.retries if step.retries is None else step.retries,
    )


def backoff(failures: int) -> float:
    """Seconds before retry number ``failures``: 2, 4, 8 ... up to 5 minutes, with jitter."""
    return min(300.0, 2.0 ** failures) * random.uniform(0.8, 1.2)


def run_step(service: Service, job_id: int, step_index: int, worker: str) -> Outcome:
    """Run step ``step_index`` of job ``job_id`` if it is still this step's turn."""
    db = service.db
    job = db.get_job(job_id)
    if job is None or job.status in ("succeeded", "failed", "skipped") or job.step_index != step_index:
        return Outcome("stale", "nothing to do: the job is finished or has moved on")
    pipeline = service.pipelines.get(job.pipeline)
    if pipeline is None or step_index >= len(pipeline.steps):
        db.finish(job_id, "failed", f"pipeline {job.pipeline!r} is no longer configured")
        return Outcome("failed", "pipeline gone")
    step = pipeline.steps[step_index]
    spec = service.spec(step)
    limits = limits_for(spec, step)

    claim = db.claim(job_id, step_index, spec.name, worker, limits.timeout + LEASE_GRACE_SECONDS)
    if claim.attempt_id is None:
        if claim.retry_after is not None:
            return Outcome("busy", "another worker holds this step", retry_in=claim.retry_after)
        return Outcome("stale", "nothing to do")
    attempt_id = claim.attempt_id

    if claim.lost and db.failures(job_id, step_index) > limits.retries:
        reason = (f"gave up: the worker running step {spec.name!r} was lost {claim.lost} times "
                  "(killed, crashed or out of memory)")
        db.finish_attempt(attempt_id, "failed", error=reason)
        db.finish(job_id, "failed", reason)
        return Outcome("failed", reason)

    event = job.object_event
    try:
        info = _current_object(service, job, event)
    except ObjectNotFound:
        return _skip(service, job, attempt_id, "the object no longer exists")
    except StorageError as exc:
        db.finish_attempt(attempt_id, "failed", error=str(exc))
        return _failed(service, job, limits, spec.name, _kind(exc), str(exc))
    if info is not None:
        if info.metadata.get(PROVENANCE_PIPELINE) == job.pipeline:
            return _skip(service, job, attempt_id, f"the object was written by pipeline {job.pipeline!r} itself")
        if event.version_id is None and event.etag and info.etag != event.etag:
            return _skip(service, job, attempt_id, "superseded: the object changed since this notification")

    request_id = f"{job_id}-{step_index}-{attempt_id}"
    result = run_in_child(
        lambda: _call_handler(service, pipeline, step, spec, limits, event, info, request_id),
        timeout=limits.timeout, memory_mb=limits.memory_mb,
    )
    value: dict[str, Any] = result.value or {}
    usage = {"duration_ms": result.duration_ms, "peak_memory_kb": result.peak_memory_kb,
             "bytes_read": value.get("bytes_read", 0), "bytes_written": value.get("bytes_written", 0)}

    if result.timed_out:  # not retried: the same input would time out again
        db.finish_attempt(attempt_id, "timed_out", error=result.error, **usage)
        db.finish(job_id, "failed", f"step {spec.name!r} {result.error}")
        return Outcome("failed", result.error or "")
    if not result.ok:  # it failed outside the handler, or died (a signal, the OOM killer) without reporting
        db.finish_attempt(attempt_id, "failed", error=result.error, **usage)
        kind = "memory" if result.error_type == "MemoryError" else "error"
        return _failed(service, job, limits, spec.name, kind, result.error or "the step's process died")
    error = value.get("error")
    if error is not None:
        db.finish_attempt(attempt_id, "failed", error=f"{error['type']}: {error['message']}", **usage)
        return _failed(service, job, limits, spec.name, error["kind"], error["message"])

    db.record_outputs(job_id, step_index, [Output(**o, step_index=step_index) for o in value["outputs"]])
    db.finish_attempt(attempt_id, "succeeded", **usage)
    if step_index + 1 < len(pipeline.steps):
        db.advance(job_id, step_index + 1)
        following = db.get_job(job_id)
        if following is not None:
            enqueue(service, following)
        return Outcome("next")
    db.finish(job_id, "succeeded")
    return Outcome("succeeded")


def _current_object(service: Service, job: Job, event: ObjectEvent) -> ObjectInfo | None:
    if not event.is_creation:
        return None
    return service.storage.head(event.bucket, event.key)


def _skip(service: Service, job: Job, attempt_id: int, reason: str) -> Outcome:
    service.db.finish_attempt(attempt_id, "skipped", error=reason)
    service.db.finish(job.id, "skipped", reason)
    return Outcome("skipped", reason)


def _kind(exc: BaseException) -> str:
    """How a failure is handled: ``permanent``, ``memory`` (both fail at once), ``transient`` or ``error``."""
    if isinstance(exc, MemoryError):
        return "memory"
    if isinstance(exc, PERMANENT):
        return "permanent"
    if isinstance(exc, TRANSIENT):
        return "transient"
    return "error"


def _failed(service: Service, job: Job, limits: Limits, step_name: str, kind: str, message: str) -> Outcome:
    """Retry a failure that may pass; fail the job on one that cannot, or when out of retries."""
    db = service.db
    where = f"step {step_name!r}: "
    if kind == "memory":
        message = f"needed more than its memory limit of {limits.memory_mb} MB"
    if kind in ("permanent", "memory"):
        db.finish(job.id, "failed", where + message)
        return Outcome("failed", message)
    failures = db.failures(job.id, job.step_index)
    if failures > limits.retries:
        reason = f"{where}failed {failures} times; last error: {message}"
        db.finish(job.id, "failed", reason)
        return Outcome("failed", reason)
    delay = backoff(failures)
    db.requeue(job.id, f"retrying in {delay:.0f} s after: {message}")
    log.warning("job %s: %s failure, retry %d/%d in %.1f s: %s", job.id, kind, failures, limits.retries,
                delay, message)
    return Outcome("retry", message, retry_in=delay)


def _call_handler(service: Service, pipeline: Pipeline, step: Step, spec: FunctionSpec, limits: Limits,
                  event: ObjectEvent, info: ObjectInfo | None, request_id: str) -> dict[str, Any]:
    """Runs in the step's child process: build the context, call the handler, report usage."""
    import time

    storage = open_storage(service.settings)  # a fresh client: connections do not survive fork
    scratch = scratch_dir(service.settings.data_dir / "scratch", request_id)
    source = info or ObjectInfo(event.bucket, event.key, event.size or 0, event.etag or "")
    provenance = {
        "fileproc-source-bucket": event.bucket,
        "fileproc-source-key": quote(event.key, safe="/"),  # S3 metadata must be ASCII
        "fileproc-source-etag": source.etag,
        PROVENANCE_PIPELINE: pipeline.name,
    }
    output_bucket = pipeline.output.bucket.replace("{bucket}", event.bucket)
    writer = OutputWriter(
        storage, output_bucket,
        lambda name: render_key(pipeline.output.key, pipeline=pipeline.name, bucket=event.bucket,
                                key=event.key, name=name),
        provenance,
    )
    reader = InputObject(storage, source, scratch)
    context = Context(
        aws_request_id=request_id,
        function_name=spec.name,
        memory_limit_in_mb=limits.memory_mb,
        deadline=time.monotonic() + limits.timeout,
        params=dict(step.params),
        input=reader,
        output=writer,
        storage=storage,
        logger=logging.getLogger(f"fileproc.function.{spec.name}"),
        pipeline=pipeline.name,
        event=event,
        scratch_dir=scratch,
    )
    outcome: dict[str, Any] = {"error": None}
    try:
        spec.handler({"Records": [event.to_record()]}, context)
    except Exception as exc:  # reported to the parent, which decides
        # Classified here: the exception object itself may not survive pickling.
        outcome["error"] = {"kind": _kind(exc), "type": type(exc).__name__, "message": str(exc) or type(exc).__name__}
    finally:
        remove_scratch(scratch)
    outcome["outputs"] = [
        {"bucket": o.bucket, "key": o.key, "size": o.size, "etag": o.etag, "content_type": o.content_type}
        for o in writer.written
    ]
    outcome["bytes_read"] = reader.bytes_read
    outcome["bytes_written"] = sum(o.size for o in writer.written)
    return outcome
