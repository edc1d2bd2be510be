"""What the dashboard's overview shows: recent activity, queues, failures and reconciliation.

Queue depth and drift come from :mod:`fileproc.metrics` (what ``/metrics``
reports), the drift table from :mod:`fileproc.state.drift`, failures from
:meth:`Database.list_jobs`; only the counts over a time window are read here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, select

from fileproc.metrics import queue_depths, recent_drift
from fileproc.service import Service
from fileproc.state import STATUSES, Job, JobStatus
from fileproc.state.drift import Drift, history
from fileproc.state.models import JobRow
from fileproc.state.records import aware

HOUR, DAY = timedelta(hours=1), timedelta(days=1)
SLOTS = 12
"""The throughput chart's bars: five minutes each over the last hour."""


@dataclass
class Overview:
    now: datetime
    hour: dict[str, int]
    """Jobs created in the last hour, by their status now."""
    day: dict[str, int]
    total: dict[str, int]
    finished_per_slot: list[dict[str, int]]
    """Jobs that ended in each five-minute slot of the last hour (oldest first), by status."""
    queues: dict[str, tuple[int, float]]
    oldest_waiting: Job | None
    failures: list[Job]
    drift_by_bucket: list[tuple[str, int, datetime | None]]
    passes: list[Drift] = field(default_factory=list)

    @property
    def succeeded_last_hour(self) -> int:
        return sum(slot.get(JobStatus.SUCCEEDED, 0) for slot in self.finished_per_slot)

    @property
    def failed_last_hour(self) -> int:
        return sum(slot.get(JobStatus.FAILED, 0) for slot in self.finished_per_slot)

    @property
    def busiest_slot(self) -> int:
        return max((sum(slot.values()) for slot in self.finished_per_slot), default=0)


def overview(service: Service) -> Overview:
    db = service.db
    with db.reading() as s:
        now = db.now(s)
        hour_ago, day_ago = now - HOUR, now - DAY
        recent = s.execute(select(JobRow.status, func.count(),
                                  func.sum(case((JobRow.created_at >= hour_ago, 1), else_=0)))
                           .where(JobRow.created_at >= day_ago).group_by(JobRow.status)).all()
        ended = s.execute(select(JobRow.status, JobRow.finished_at)
                          .where(JobRow.finished_at >= hour_ago)).all()
        oldest = s.scalar(select(JobRow.id).where(JobRow.status == JobStatus.QUEUED)
                          .order_by(JobRow.id).limit(1))
    day: dict[str, int] = {str(status): 0 for status in STATUSES}
    hour = dict(day)
    for status, in_day, in_hour in recent:
        day[status], hour[status] = in_day, int(in_hour or 0)
    slots: list[dict[str, int]] = [{} for _ in range(SLOTS)]
    width = HOUR / SLOTS
    for status, finished in ended:
        at = aware(finished)
        if at is None:
            continue
        index = min(SLOTS - 1, max(0, int((at - hour_ago) / width)))
        slots[index][status] = slots[index].get(status, 0) + 1
    return Overview(
        now=now, hour=hour, day=day, total=db.count_jobs(), finished_per_slot=slots,
        queues=queue_depths(service),
        oldest_waiting=db.get_job(oldest) if oldest is not None else None,
        failures=db.list_jobs(JobStatus.FAILED, 8),
        drift_by_bucket=recent_drift(service),
        passes=history(db, 10),
    )


def chart(found: Overview, width: int = 360, height: int = 64) -> list[dict[str, Any]]:
    """The throughput chart's bars (x, width, and stacked heights per status), for an inline SVG."""
    top = max(found.busiest_slot, 1)
    bar = width / SLOTS
    bars = []
    for index, slot in enumerate(found.finished_per_slot):
        y = float(height)
        parts = []
        for status in (JobStatus.SUCCEEDED, JobStatus.SKIPPED, JobStatus.FAILED):
            count = slot.get(status, 0)
            if count:
                h = max(1.0, height * count / top)
                y -= h
                parts.append({"status": str(status), "y": round(y, 1), "height": round(h, 1), "count": count})
        bars.append({"x": round(index * bar + 1, 1), "width": round(bar - 2, 1), "parts": parts,
                     "minutes_ago": 60 - index * 5, "total": sum(slot.values())})
    return bars


__all__ = ["Overview", "chart", "overview"]
