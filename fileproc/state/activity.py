"""Jobs over time and in the queues: what the dashboard's overview and ``/metrics`` count.

Counts only, read in one short read transaction each, on the database's
clock; which queue a pipeline's step goes to is the caller's to know.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import case, func, select

from fileproc.state.models import JobRow, JobStatus
from fileproc.state.records import STATUSES, aware

if TYPE_CHECKING:
    from fileproc.state import Database

HOUR, DAY = timedelta(hours=1), timedelta(days=1)


@dataclass(frozen=True)
class WaitingSteps:
    """Queued jobs at one step of one pipeline: how many, and how long the oldest has waited."""

    pipeline: str
    step_index: int
    count: int
    oldest_seconds: float


@dataclass
class Activity:
    """Jobs of the last hour and day, as of ``now`` (the database's clock).

    ``hour`` / ``day``: jobs created in the window, by their status now
    (every status, zero included); ``ended``: (status, when) of each job that
    ended in the last hour; ``oldest_queued``: the id of the oldest job still
    queued, if any.
    """

    now: datetime
    hour: dict[str, int] = field(default_factory=dict)
    day: dict[str, int] = field(default_factory=dict)
    ended: list[tuple[str, datetime]] = field(default_factory=list)
    oldest_queued: int | None = None


def waiting_steps(db: Database) -> list[WaitingSteps]:
    """Every (pipeline, step) with queued jobs (counted over the status index)."""
    with db.reading() as s:
        now = db.now(s)
        rows = s.execute(select(JobRow.pipeline, JobRow.step_index, func.count(), func.min(JobRow.created_at))
                         .where(JobRow.status == JobStatus.QUEUED)
                         .group_by(JobRow.pipeline, JobRow.step_index)).all()
    found = []
    for pipeline, step_index, count, first in rows:
        since = aware(first)
        waited = max(0.0, (now - since).total_seconds()) if since is not None else 0.0
        found.append(WaitingSteps(pipeline, step_index, count, waited))
    return found


def activity(db: Database, *, hour: timedelta = HOUR, day: timedelta = DAY) -> Activity:
    """Jobs created in the last ``hour`` and ``day`` by status, jobs that ended in the last ``hour``."""
    with db.reading() as s:
        now = db.now(s)
        hour_ago, day_ago = now - hour, now - day
        recent = s.execute(select(JobRow.status, func.count(),
                                  func.sum(case((JobRow.created_at >= hour_ago, 1), else_=0)))
                           .where(JobRow.created_at >= day_ago).group_by(JobRow.status)).all()
        ended = s.execute(select(JobRow.status, JobRow.finished_at)
                          .where(JobRow.finished_at >= hour_ago)).all()
        oldest = s.scalar(select(JobRow.id).where(JobRow.status == JobStatus.QUEUED)
                          .order_by(JobRow.id).limit(1))
    found = Activity(now, oldest_queued=oldest)
    found.day = {str(status): 0 for status in STATUSES}
    found.hour = dict(found.day)
    for status, in_day, in_hour in recent:
        found.day[status], found.hour[status] = in_day, int(in_hour or 0)
    for status, finished in ended:
        at = aware(finished)
        if at is not None:
            found.ended.append((str(status), at))
    return found


__all__ = ["DAY", "HOUR", "Activity", "WaitingSteps", "activity", "waiting_steps"]
