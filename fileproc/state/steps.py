"""A step's two transactions and its lease renewals, as statements built once.

They run for every step of every job, so they skip the ORM: each is a Core
statement made at import time with bound parameters, executed on a plain
connection. :class:`~fileproc.state.Database` exposes them as
``start_step``, ``renew_lease`` and ``finish_step``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Connection, Table, and_, bindparam, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from fileproc.state import logtotals
from fileproc.state.models import AttemptRow, AttemptStatus, JobRow, JobStatus, OutputRow, utcnow
from fileproc.state.records import Job, StepEnd, StepStart, aware, job_of

BAD_ATTEMPTS = (AttemptStatus.FAILED, AttemptStatus.TIMED_OUT, AttemptStatus.LOST)
LOST_REASON = "the worker running this step was lost (killed, crashed, out of memory or cut off)"

jobs = cast(Table, JobRow.__table__)
attempts = cast(Table, AttemptRow.__table__)
outputs = cast(Table, OutputRow.__table__)

_JOB = select(jobs).where(jobs.c.id == bindparam("p_job"))

_NEW_ATTEMPT = insert(attempts).values(
    job_id=bindparam("p_job"), step_index=bindparam("p_step"), function=bindparam("p_function"),
    worker=bindparam("p_worker"), started_at=bindparam("p_now"), status=AttemptStatus.RUNNING,
    bytes_read=0, bytes_written=0,
).returning(attempts.c.id)

# The conditions are checked again here: on PostgreSQL another worker may have taken the step since the read.
_TAKE = update(jobs).where(
    jobs.c.id == bindparam("p_job"), jobs.c.step_index == bindparam("p_step"),
    # A queued retry waits out its backoff even if an old message turns up early.
    or_(and_(jobs.c.status == JobStatus.QUEUED,
             or_(jobs.c.send_after.is_(None), jobs.c.send_after <= bindparam("p_now"))),
        and_(jobs.c.status == JobStatus.RUNNING,
             or_(jobs.c.lease_until.is_(None), jobs.c.lease_until < bindparam("p_now")))),
).values(
    # The step's message is consumed: from now on sent_at marks a re-send in flight.
    status=JobStatus.RUNNING, lease_until=bindparam("p_lease_until"), attempt_id=bindparam("p_attempt"),
    updated_at=bindparam("p_now"), send_after=None, sent_at=None,
)

_LOSE_OTHERS = update(attempts).where(
    attempts.c.job_id == bindparam("p_job"), attempts.c.status == AttemptStatus.RUNNING,
    attempts.c.id != bindparam("p_attempt"),
).values(status=AttemptStatus.LOST, finished_at=bindparam("p_now"), error=LOST_REASON)

_BAD_COUNTS = select(attempts.c.status, func.count()).where(
    attempts.c.job_id == bindparam("p_job"), attempts.c.step_index == bindparam("p_step"),
    attempts.c.status.in_(BAD_ATTEMPTS),
).group_by(attempts.c.status)

_RENEW = update(jobs).where(
    jobs.c.id == bindparam("p_job"), jobs.c.attempt_id == bindparam("p_attempt"),
    jobs.c.status == JobStatus.RUNNING, jobs.c.lease_until >= bindparam("p_now"),
).values(lease_until=bindparam("p_lease_until"))

# Every write of a step's end is fenced to the attempt that owns the step.
_FENCE = (jobs.c.id == bindparam("p_job"), jobs.c.attempt_id == bindparam("p_attempt"),
          jobs.c.step_index == bindparam("p_step"), jobs.c.status == JobStatus.RUNNING)
_RELEASE: dict[str, Any] = {"updated_at": bindparam("p_now"), "lease_until": None, "attempt_id": None}

_MOVE_NEXT = update(jobs).where(*_FENCE).values(
    status=JobStatus.QUEUED, step_index=jobs.c.step_index + 1, error=None, sent_at=bindparam("p_sent_at"),
    send_after=None, sends=jobs.c.sends + bindparam("p_sends"), **_RELEASE)
_MOVE_RETRY = update(jobs).where(*_FENCE).values(
    status=JobStatus.QUEUED, error=bindparam("p_reason"), sent_at=None, send_after=bindparam("p_send_after"),
    **_RELEASE)
_MOVE_END = update(jobs).where(*_FENCE).values(
    status=bindparam("p_status"), error=bindparam("p_reason"), finished_at=bindparam("p_now"), **_RELEASE)

_END_ATTEMPT = update(attempts).where(attempts.c.id == bindparam("p_attempt")).values(
    status=bindparam("p_status"), finished_at=bindparam("p_now"), duration_ms=bindparam("p_duration"),
    peak_memory_kb=bindparam("p_peak"), bytes_read=bindparam("p_read"), bytes_written=bindparam("p_written"),
    cold_start=bindparam("p_cold"), recycled=bindparam("p_recycled"), error=bindparam("p_error"),
    traceback=bindparam("p_traceback"), result=bindparam("p_result"),
)

_OUTPUTS = {name: dialect.insert(outputs).on_conflict_do_nothing()
            for name, dialect in (("sqlite", sqlite), ("postgresql", postgresql))}


def now(connection: Connection) -> datetime:
    """The database's clock (workers' clocks differ; SQLite lives on this host)."""
    if connection.dialect.name == "sqlite":
        return utcnow()
    return aware(connection.execute(select(func.now())).scalar_one()) or utcnow()


class _Raced(Exception):
    """Another worker took the step between our read and our write (PostgreSQL): roll back."""


def start_step(connect: Callable[[], Any], job_id: int, step_index: int, worker: str, lease_seconds: float,
               function_of: Callable[[str, int], str]) -> StepStart | Job | None:
    """See :meth:`fileproc.state.Database.start_step`."""
    try:
        with connect() as c:
            at = now(c)
            row = c.execute(_JOB, {"p_job": job_id}).first()
            if row is None:
                return None
            send_after, lease_until = aware(row.send_after), aware(row.lease_until)
            due = row.step_index == step_index and (
                (row.status == JobStatus.QUEUED and (send_after is None or send_after <= at))
                or (row.status == JobStatus.RUNNING and (lease_until is None or lease_until < at)))
            if not due:
                return job_of(row, details=False)
            attempt_id = c.execute(_NEW_ATTEMPT, {
                "p_job": job_id, "p_step": step_index, "p_function": function_of(row.pipeline, step_index),
                "p_worker": worker, "p_now": at}).scalar_one()
            params = {"p_job": job_id, "p_step": step_index, "p_now": at, "p_attempt": attempt_id,
                      "p_lease_until": at + timedelta(seconds=lease_seconds)}
            if not c.execute(_TAKE, params).rowcount:
                raise _Raced
            failures = lost = 0
            if row.status == JobStatus.RUNNING:  # taken over from a worker whose lease ran out
                c.execute(_LOSE_OTHERS, params)
            if row.status == JobStatus.RUNNING or row.error is not None:  # earlier attempts at this step
                counts = {status: count for status, count in c.execute(_BAD_COUNTS, params)}
                failures, lost = sum(counts.values()), counts.get(AttemptStatus.LOST, 0)
            taken = job_of(row, details=False)
            return StepStart(taken, attempt_id, failures=failures, lost=lost)
    except _Raced:
        with connect() as c:
            again = c.execute(_JOB, {"p_job": job_id}).first()
            return job_of(again, details=False) if again else None


def renew_lease(connect: Callable[[], Any], job_id: int, attempt_id: int, lease_seconds: float) -> bool:
    """See :meth:`fileproc.state.Database.renew_lease`."""
    with connect() as c:
        at = now(c)
        return bool(c.execute(_RENEW, {"p_job": job_id, "p_attempt": attempt_id, "p_now": at,
                                       "p_lease_until": at + timedelta(seconds=lease_seconds)}).rowcount)


def finish_step(connect: Callable[[], Any], end: StepEnd) -> bool:
    """See :meth:`fileproc.state.Database.finish_step`."""
    with connect() as c:
        at = now(c)
        fence = {"p_job": end.job_id, "p_attempt": end.attempt_id, "p_step": end.step_index, "p_now": at}
        if end.outcome == "next":
            moved = c.execute(_MOVE_NEXT, {**fence, "p_sent_at": at if end.send_now else None,
                                           "p_sends": 1 if end.send_now else 0}).rowcount
        elif end.outcome == "retry":
            moved = c.execute(_MOVE_RETRY, {**fence, "p_reason": end.reason,
                                            "p_send_after": at + timedelta(seconds=end.retry_in)}).rowcount
        else:
            moved = c.execute(_MOVE_END, {**fence, "p_status": JobStatus(end.outcome),
                                          "p_reason": end.reason}).rowcount
        c.execute(_END_ATTEMPT, {
            "p_attempt": end.attempt_id, "p_now": at, "p_status": end.attempt_status if moved else AttemptStatus.LATE,
            "p_duration": end.duration_ms, "p_peak": end.peak_memory_kb, "p_read": end.bytes_read,
            "p_written": end.bytes_written, "p_cold": end.cold_start, "p_recycled": end.recycled,
            "p_error": end.error if moved else _late_reason(end), "p_traceback": end.traceback,
            "p_result": end.result,
        })
        if moved and end.outputs:
            c.execute(_OUTPUTS[c.dialect.name], [
                {"job_id": end.job_id, "step_index": end.step_index, "bucket": o.bucket, "key": o.key,
                 "size": o.size, "etag": o.etag, "content_type": o.content_type} for o in end.outputs])
        if moved and end.outcome in ("next", "succeeded") and isinstance(end.result, dict) \
                and "log_totals" in end.result:  # a `logs` step's file totals (see state/logtotals.py)
            logtotals.record(c, end.result["log_totals"])
        return bool(moved)


def _late_reason(end: StepEnd) -> str:
    what = end.error or end.attempt_status
    return f"result refused: this attempt lost its lease and another attempt took the step over ({what})"
