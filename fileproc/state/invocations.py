"""Invocations on an event that is not an object's (a stream's batch, a schedule's tick, an HTTP request).

Each is recorded after it ran, in one transaction (statements built once,
as a step's are: :mod:`.steps`), as a finished job of its
own one-step pipeline with one attempt: so ``fileproc logs``, usage,
metering, the dashboard and ``/metrics`` see it like any step. Nothing of it
is in the database while it runs, so nothing is ever sent again by the
outbox: the caller (a stream's poller) runs it again itself if it was lost.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, insert

from fileproc.state.steps import Prepared, attempts, jobs, now


@dataclass(frozen=True)
class Invoked:
    """One invocation as it is recorded: its job's place, and its one attempt's end."""

    pipeline: str  # a made-up one-step pipeline's name
    bucket: str
    key: str  # what the invocation was on, for people ("clicks/shardId-000000000000/5-104")
    version: str  # unique per invocation (its request id)
    event: dict[str, Any]  # a summary of the event (never a whole batch of records)
    function: str
    worker: str
    started_at: datetime
    job_status: str  # succeeded or failed
    attempt_status: str
    error: str | None = None
    traceback: str | None = None
    result: Any = None
    duration_ms: int | None = None
    peak_memory_kb: int | None = None
    cold_start: bool | None = None
    recycled: str | None = None
    version_ran: str | None = None
    memory_mb: int | None = None
    billed_ms: int | None = None
    log: str | None = None


_JOB = Prepared(insert(jobs).values(
    pipeline=bindparam("p_pipeline"), bucket=bindparam("p_bucket"), key=bindparam("p_key"),
    version=bindparam("p_version"), event=bindparam("p_event"), status=bindparam("p_status"), step_index=0,
    error=bindparam("p_error"), sends=0, created_at=bindparam("p_started"), updated_at=bindparam("p_now"),
    finished_at=bindparam("p_now"),
).returning(jobs.c.id))

_ATTEMPT = Prepared(insert(attempts).values(
    job_id=bindparam("p_job"), step_index=0, function=bindparam("p_function"), status=bindparam("p_status"),
    worker=bindparam("p_worker"), started_at=bindparam("p_started"), finished_at=bindparam("p_now"),
    duration_ms=bindparam("p_duration"), peak_memory_kb=bindparam("p_peak"), bytes_read=0, bytes_written=0,
    cold_start=bindparam("p_cold"), recycled=bindparam("p_recycled"), error=bindparam("p_error"),
    traceback=bindparam("p_traceback"), result=bindparam("p_result"), version=bindparam("p_version"),
    memory_mb=bindparam("p_memory"), billed_ms=bindparam("p_billed"), log=bindparam("p_log"),
).returning(attempts.c.id))


def record_invocation(connect: Callable[[], Any], done: Invoked) -> tuple[int, int]:
    """Insert the finished job and its attempt, in one transaction; (job id, attempt id)."""
    return record_invocations(connect, [done])[0]


def record_invocations(connect: Callable[[], Any], many: list[Invoked]) -> list[tuple[int, int]]:
    """Insert each finished job and its attempt, all in one transaction; their (job id, attempt id)."""
    ids = []
    with connect() as tx:
        at = now(tx)
        for done in many:
            job_id = _JOB.rows(tx, {
                "p_pipeline": done.pipeline, "p_bucket": done.bucket, "p_key": done.key, "p_version": done.version,
                "p_event": done.event, "p_status": done.job_status, "p_error": done.error,
                "p_started": done.started_at, "p_now": at})[0].id
            attempt_id = _ATTEMPT.rows(tx, {
                "p_job": job_id, "p_function": done.function, "p_status": done.attempt_status,
                "p_worker": done.worker, "p_started": done.started_at, "p_now": at, "p_duration": done.duration_ms,
                "p_peak": done.peak_memory_kb, "p_cold": done.cold_start, "p_recycled": done.recycled,
                "p_error": done.error, "p_traceback": done.traceback, "p_result": done.result,
                "p_version": done.version_ran, "p_memory": done.memory_mb, "p_billed": done.billed_ms,
                "p_log": done.log})[0].id
            ids.append((job_id, attempt_id))
    return ids


__all__ = ["Invoked", "record_invocation", "record_invocations"]
