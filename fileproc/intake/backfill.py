"""Backfill: catch up on objects whose notification never arrived.

Lists a bucket and feeds every object a pipeline matches and that has no
succeeded job for its current version: new ones get a job, failed ones are
retried, and ones already done or under way are left alone. Safe to run at
any time, as often as you like.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

from fileproc import dispatch
from fileproc.events import ObjectEvent
from fileproc.rules import match
from fileproc.service import Service


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
    for info in service.storage.list(bucket, prefix):
        report.listed += 1
        event = ObjectEvent(
            bucket=info.bucket, key=info.key, event_name="s3:ObjectCreated:Put", size=info.size,
            etag=info.etag, version_id=info.version_id, time=info.last_modified or ObjectEvent(bucket, "").time,
            metadata=info.metadata, source="backfill",
        )
        if match(pipelines, event):
            report.matched += 1
            for item in dispatch.submit(service, event):
                if item.created:
                    report.queued += 1
                elif item.job.status == "failed":
                    dispatch.retry(service, item.job.id)
                    report.retried += 1
                else:
                    report.already += 1
        if progress:
            progress(1)
    return report
