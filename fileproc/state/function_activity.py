"""What each function did lately: its attempts over a window, for the dashboard's Functions pages.

The monitoring graphs (invocations, errors, throttles, duration percentiles,
concurrent executions, cold starts: the Lambda console's monitoring tab)
are drawn from the attempts table, where every step, direct invocation and
invocation on an event leaves one row per try (:mod:`fileproc.state.usage`
reads the same rows for ``fileproc usage``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, NamedTuple

from sqlalchemy import case, func, select

from fileproc.state.models import AttemptRow, AttemptStatus, JobRow
from fileproc.state.records import aware

if TYPE_CHECKING:
    from fileproc.state import Database

THROTTLED = "throttled"
"""An attempt that found its function's reserved concurrency all in use (``fileproc.runtime.runner.THROTTLED``)."""
ERRORS = (AttemptStatus.FAILED, AttemptStatus.TIMED_OUT, AttemptStatus.LOST, AttemptStatus.LATE,
          AttemptStatus.RETRIED)
"""Attempts whose handler failed (a retried one failed before an admin's retry)."""
RAN = (AttemptStatus.SUCCEEDED, AttemptStatus.RUNNING, *ERRORS)
"""Attempts that are invocations of the handler (not throttled, not skipped before it started)."""
LIMIT = 200_000
"""The most attempts one window reads (a graph of more would need the metrics' running totals)."""


class AttemptPoint(NamedTuple):
    """One attempt as the graphs count it."""

    started_at: datetime
    finished_at: datetime | None
    status: str
    duration_ms: int | None
    cold_start: bool | None


@dataclass(frozen=True)
class FunctionSummary:
    """A function's last invocation, and its invocations and errors since a time."""

    function: str
    last_invoked: datetime | None
    invocations: int
    errors: int

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.invocations if self.invocations else None


def attempts_since(db: Database, function: str, since: datetime) -> list[AttemptPoint]:
    """``function``'s attempts that started since ``since`` (at most :data:`LIMIT`, the newest), oldest first."""
    query = (select(AttemptRow.started_at, AttemptRow.finished_at, AttemptRow.status, AttemptRow.duration_ms,
                    AttemptRow.cold_start)
             .where(AttemptRow.function == function, AttemptRow.started_at >= since)
             .order_by(AttemptRow.id.desc()).limit(LIMIT))
    with db.reading() as s:
        rows = s.execute(query).all()
    return [AttemptPoint(aware(r.started_at) or since, aware(r.finished_at), r.status, r.duration_ms, r.cold_start)
            for r in reversed(rows)]


def summaries(db: Database, since: datetime) -> dict[str, FunctionSummary]:
    """Every function that ever ran: its last invocation, and its invocations and errors since ``since``."""
    recent = AttemptRow.started_at >= since
    query = (select(AttemptRow.function, func.max(AttemptRow.started_at).label("last"),
                    func.sum(case((recent & AttemptRow.status.in_(RAN), 1), else_=0)).label("runs"),
                    func.sum(case((recent & AttemptRow.status.in_(ERRORS), 1), else_=0)).label("errors"))
             .group_by(AttemptRow.function))
    with db.reading() as s:
        return {r.function: FunctionSummary(r.function, aware(r.last), int(r.runs or 0), int(r.errors or 0))
                for r in s.execute(query)}


def recent_invocations(db: Database, function: str, limit: int = 20) -> list[dict[str, object]]:
    """``function``'s last ``limit`` attempts, newest first: job, status, version, times, error, result, log."""
    query = (select(AttemptRow.id, AttemptRow.job_id, AttemptRow.step_index, AttemptRow.status, AttemptRow.version,
                    AttemptRow.started_at, AttemptRow.duration_ms, AttemptRow.cold_start, AttemptRow.error,
                    AttemptRow.result, AttemptRow.log, JobRow.pipeline, JobRow.bucket, JobRow.key)
             .join(JobRow, JobRow.id == AttemptRow.job_id)
             .where(AttemptRow.function == function).order_by(AttemptRow.id.desc()).limit(limit))
    with db.reading() as s:
        return [{"id": r.id, "job": r.job_id, "request_id": f"{r.job_id}-{r.step_index}-{r.id}", "status": r.status,
                 "version": r.version, "started_at": aware(r.started_at), "duration_ms": r.duration_ms,
                 "cold_start": r.cold_start, "error": r.error, "result": r.result, "log": r.log,
                 "pipeline": r.pipeline, "bucket": r.bucket, "key": r.key}
                for r in s.execute(query)]


__all__ = ["ERRORS", "LIMIT", "RAN", "THROTTLED", "AttemptPoint", "FunctionSummary", "attempts_since",
           "recent_invocations", "summaries"]
