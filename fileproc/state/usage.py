"""What ran and what it would cost: the attempts behind ``fileproc usage`` and the usage page.

From each attempt's billed duration and the memory it was given::

    gb_seconds = billed_ms / 1000 * memory_mb / 1024
    cost       = requests * price_per_request + gb_seconds * price_per_gb_second

with the prices of ``usage.price_per_request`` and ``usage.price_per_gb_second``
(by default Lambda's public x86 prices, so the figures compare). The billed
duration itself is recorded by the runtime (:mod:`fileproc.runtime.metering`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from sqlalchemy import select

from fileproc.state.models import AttemptRow, JobRow

if TYPE_CHECKING:
    from fileproc.config import Settings
    from fileproc.state import Database

GROUPINGS = ("function", "pipeline", "day")

BILLED_STATUSES = ("succeeded", "failed", "timed_out", "late", "retried")
"""Attempts that ran a handler (a skipped attempt never started one; a lost one has no end recorded)."""


class BilledAttempt(NamedTuple):
    """One attempt that ran a handler, as the usage summary reads it."""

    function: str
    pipeline: str
    started_at: datetime
    duration_ms: int
    billed_ms: int | None
    memory_mb: int | None
    cold_start: bool | None
    status: str


@dataclass
class Usage:
    """What one group of invocations cost."""

    group: str
    requests: int = 0
    billed_ms: int = 0
    gb_seconds: float = 0.0
    cold_starts: int = 0
    errors: int = 0
    duration_ms: int = 0
    cost: float = 0.0
    functions: set[str] = field(default_factory=set)

    def to_dict(self, by: str) -> dict[str, Any]:
        return {by: self.group, "requests": self.requests, "billed_ms": self.billed_ms,
                "gb_seconds": self.gb_seconds, "cold_starts": self.cold_starts, "errors": self.errors,
                "duration_ms": self.duration_ms, "cost": self.cost}


def gb_seconds(billed: int, memory_mb: int) -> float:
    return billed / 1000 * memory_mb / 1024


def billed_attempts(db: Database, *, function: str | None = None, pipeline: str | None = None,
                    since: datetime | None = None) -> list[BilledAttempt]:
    """The attempts that ran a handler (:data:`BILLED_STATUSES`), narrowed by each filter given."""
    query = (select(AttemptRow.function, JobRow.pipeline, AttemptRow.started_at, AttemptRow.duration_ms,
                    AttemptRow.billed_ms, AttemptRow.memory_mb, AttemptRow.cold_start, AttemptRow.status)
             .join(JobRow, AttemptRow.job_id == JobRow.id)
             .where(AttemptRow.duration_ms.is_not(None), AttemptRow.status.in_(BILLED_STATUSES)))
    if function:
        query = query.where(AttemptRow.function == function)
    if pipeline:
        query = query.where(JobRow.pipeline == pipeline)
    if since:
        query = query.where(AttemptRow.started_at >= since)
    with db.reading() as s:
        return [BilledAttempt(row.function, row.pipeline, row.started_at, row.duration_ms or 0, row.billed_ms,
                              row.memory_mb, row.cold_start, row.status) for row in s.execute(query)]


def usage(db: Database, settings: Settings, *, by: str = "function", function: str | None = None,
          pipeline: str | None = None, since: datetime | None = None) -> list[Usage]:
    """Invocations grouped ``by`` function, pipeline or day (UTC), oldest or alphabetical first."""
    if by not in GROUPINGS:
        raise ValueError(f"--by must be one of {', '.join(GROUPINGS)}")
    rows = billed_attempts(db, function=function, pipeline=pipeline, since=since)
    return summarise(rows, by, price_per_request=settings.usage.price_per_request,
                     price_per_gb_second=settings.usage.price_per_gb_second)


def summarise(rows: Iterable[BilledAttempt], by: str, *, price_per_request: float,
              price_per_gb_second: float) -> list[Usage]:
    """``rows`` grouped ``by`` function, pipeline or day, each group with its cost at these prices."""
    groups: dict[str, Usage] = {}
    for row in rows:
        pipeline = "(invoke)" if row.pipeline.startswith("_invoke.") else row.pipeline  # direct invocations
        key = {"function": row.function, "pipeline": pipeline,
               "day": row.started_at.strftime("%Y-%m-%d")}[by]
        group = groups.setdefault(key, Usage(key))
        # Attempts recorded before metering have no billed duration: their whole milliseconds are.
        billed = row.billed_ms if row.billed_ms is not None else max(1, row.duration_ms)
        memory = row.memory_mb or 0
        group.requests += 1
        group.billed_ms += billed
        group.gb_seconds += gb_seconds(billed, memory)
        group.duration_ms += row.duration_ms
        group.cold_starts += 1 if row.cold_start else 0
        group.errors += 0 if row.status == "succeeded" else 1
    for group in groups.values():
        group.cost = group.requests * price_per_request + group.gb_seconds * price_per_gb_second
    return [groups[key] for key in sorted(groups)]


__all__ = ["BILLED_STATUSES", "GROUPINGS", "BilledAttempt", "Usage", "billed_attempts", "gb_seconds", "summarise",
           "usage"]
