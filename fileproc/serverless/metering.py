"""Pay only for what ran: billed duration, GB-seconds, Lambda's REPORT line, and ``fileproc usage``.

Every attempt records its duration, the memory it was given (``memory_mb``)
and its billed duration (``billed_ms``: the duration rounded up to the next
millisecond, at least 1, as Lambda bills). From those::

    gb_seconds = billed_ms / 1000 * memory_mb / 1024
    cost       = requests * usage.price_per_request + gb_seconds * usage.price_per_gb_second

with Lambda's public x86 prices as the defaults, so the figures compare.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from fileproc.state.models import AttemptRow, JobRow

if TYPE_CHECKING:
    from fileproc.config import Settings
    from fileproc.runtime.results import ChildResult
    from fileproc.state import Database

log = logging.getLogger("fileproc.runtime.runner")  # REPORT lines sit with the worker's step lines

GROUPINGS = ("function", "pipeline", "day")


def billed_ms(seconds: float) -> int:
    """Lambda's billed duration: the duration rounded up to 1 ms (at least 1 ms)."""
    return max(1, math.ceil(round(seconds * 1000, 6)))


def gb_seconds(billed: int, memory_mb: int) -> float:
    return billed / 1000 * memory_mb / 1024


def report_line(request_id: str, seconds: float, memory_mb: int, peak_memory_kb: int,
                init_ms: float | None = None) -> str:
    """Lambda's ``REPORT`` line for one invocation."""
    line = (f"REPORT RequestId: {request_id}\tDuration: {seconds * 1000:.2f} ms\t"
            f"Billed Duration: {billed_ms(seconds)} ms\tMemory Size: {memory_mb} MB\t"
            f"Max Memory Used: {math.ceil(peak_memory_kb / 1024)} MB")
    return line + (f"\tInit Duration: {init_ms:.2f} ms" if init_ms is not None else "")


def attempt_metering(request_id: str, result: ChildResult | None, memory_mb: int, output: str | None,
                     function: str, *, deployed: bool = False) -> dict[str, Any]:
    """What an attempt records besides its duration: memory given, billed duration, and its log.

    The log is what the invocation printed (``output``), a note of processes
    it left running, and Lambda's REPORT line, which the worker logs too.
    """
    if result is None or not result.duration_s:
        return {}
    report = report_line(request_id, result.duration_s, memory_mb, result.peak_memory_kb)
    # A deployed function's REPORT goes to the worker's log as Lambda's goes to CloudWatch; a built-in's
    # only when debugging (the console shows one line per job, not per step).
    log.log(logging.INFO if deployed else logging.DEBUG, "%s (%s)", report, function)
    notes = ""
    if result.left_running:
        notes = (f"fileproc: the invocation left {result.left_running} process(es) running when it returned; "
                 "they were killed\n")
    return {"memory_mb": memory_mb, "billed_ms": billed_ms(result.duration_s),
            "log": f"{output or ''}{notes}{report}\n"}


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


BILLED_STATUSES = ("succeeded", "failed", "timed_out", "late", "retried")
"""Attempts that ran a handler (a skipped attempt never started one; a lost one has no end recorded)."""


def usage(db: Database, settings: Settings, *, by: str = "function", function: str | None = None,
          pipeline: str | None = None, since: datetime | None = None) -> list[Usage]:
    """Invocations grouped ``by`` function, pipeline or day (UTC), oldest or alphabetical first."""
    if by not in GROUPINGS:
        raise ValueError(f"--by must be one of {', '.join(GROUPINGS)}")
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
        rows = s.execute(query).all()
    return summarise(rows, settings, by)


def summarise(rows: Iterable[Any], settings: Settings, by: str) -> list[Usage]:
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
        group.cost = (group.requests * settings.usage.price_per_request
                      + group.gb_seconds * settings.usage.price_per_gb_second)
    return [groups[key] for key in sorted(groups)]


__all__ = ["GROUPINGS", "Usage", "attempt_metering", "billed_ms", "gb_seconds", "report_line", "summarise", "usage"]
