"""Backfill: catch up on objects whose notification never arrived.

Lists a bucket and feeds every object a pipeline matches and that has no
succeeded job for its current version: new ones get a job, failed ones are
retried, and ones already done or under way are left alone. Safe to run at
any time, as often as you like.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass

from fileproc.dispatch import retry
from fileproc.errors import ObjectNotFound
from fileproc.events import ObjectEvent
from fileproc.objects import event_for
from fileproc.rules import match
from fileproc.service import Service
from fileproc.storage import ObjectInfo

log = logging.getLogger(__name__)

BATCH = 200
"""Events submitted per transaction."""


@dataclass
class BackfillReport:
    listed: int = 0
    matched: int = 0
    queued: int = 0
    retried: int = 0
    already: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def backfill(service: Service, bucket: str, prefix: str = "",
             progress: Callable[[int], None] | None = None) -> BackfillReport:
    """Feed ``bucket/prefix*`` through its pipelines; ``progress(n)`` after each object."""
    report = BackfillReport()
    pipelines = list(service.pipelines.values())
    batch: list[ObjectEvent] = []
    for info in service.storage.list(bucket, prefix):
        report.listed += 1
        # A listing carries no content type, metadata or version id: only a candidate is HEADed,
        # so it is described exactly as the watcher or a notification would describe it.
        if match(pipelines, event_for(info.bucket, info.key, info, source="backfill", listed=True)):
            event = _headed(service, info)
            if event is not None and match(pipelines, event):
                report.matched += 1
                batch.append(event)
        if len(batch) >= BATCH:
            _submit(service, batch, report)
            batch = []
        if progress:
            progress(1)
    _submit(service, batch, report)
    return report


def _headed(service: Service, info: ObjectInfo) -> ObjectEvent | None:
    try:
        full = service.storage.head(info.bucket, info.key)
    except ObjectNotFound:
        log.info("backfill: %s/%s is gone since it was listed", info.bucket, info.key)
        return None
    return event_for(info.bucket, info.key, full, source="backfill")


def _submit(service: Service, events: list[ObjectEvent], report: BackfillReport) -> None:
    for item in service.submit(events):
        if item.created:
            report.queued += 1
        elif item.job.status == "failed":
            retry(service, item.job.id)
            report.retried += 1
        else:
            report.already += 1
