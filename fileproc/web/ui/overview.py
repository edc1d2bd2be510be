"""What the dashboard's overview shows: recent activity, queues, failures and reconciliation.

Queue depth and drift come from :mod:`fileproc.metrics` (what ``/metrics``
reports), the drift table from :mod:`fileproc.state.drift`, failures from
:meth:`Database.list_jobs`, the counts over a time window from
:mod:`fileproc.state.activity`; here they are put in the page's shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from fileproc.metrics import queue_depths, recent_drift
from fileproc.service import Service
from fileproc.state import Job, JobStatus
from fileproc.state.activity import activity
from fileproc.state.drift import BucketDrift, Drift, history

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
    drift_by_bucket: list[BucketDrift]
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
    recent = activity(db, hour=HOUR, day=DAY)
    hour_ago = recent.now - HOUR
    slots: list[dict[str, int]] = [{} for _ in range(SLOTS)]
    width = HOUR / SLOTS
    for status, at in recent.ended:
        index = min(SLOTS - 1, max(0, int((at - hour_ago) / width)))
        slots[index][status] = slots[index].get(status, 0) + 1
    return Overview(
        now=recent.now, hour=recent.hour, day=recent.day, total=db.count_jobs(), finished_per_slot=slots,
        queues=queue_depths(service),
        oldest_waiting=db.get_job(recent.oldest_queued) if recent.oldest_queued is not None else None,
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
