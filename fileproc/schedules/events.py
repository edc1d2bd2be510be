"""The event a scheduled function gets: EventBridge's "Scheduled Event", or the schedule's own ``input``.

As EventBridge delivers it to a Lambda target::

    {"version": "0", "id": "...", "detail-type": "Scheduled Event", "source": "aws.events",
     "account": "000000000000", "time": "2026-12-05T12:00:00Z", "region": "us-east-1",
     "resources": ["arn:aws:events:us-east-1:000000000000:rule/nightly"], "detail": {}}

``time`` is the tick's (not when the run started). A tick's ``id`` is the
same for every run of that tick (a run taken over from a host that died
keeps it), so a handler can tell a repeat from a new tick.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from fileproc.functions import ACCOUNT_ID
from fileproc.mappings import Schedule

NAMESPACE = uuid.UUID("5c1e0d3a-6f0b-4d0e-9a43-2b7c4f1e8a10")
"""Of the events' ids: uuid5 of ``NAME/TIME`` (fixed, so every host names a tick alike)."""


def iso(moment: datetime) -> str:
    """EventBridge's time format: ``2026-12-05T12:00:00Z`` (UTC, to the second)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rule_arn(schedule: Schedule, region: str) -> str:
    return f"arn:aws:events:{region}:{ACCOUNT_ID}:rule/{schedule.name}"


def scheduled_event(schedule: Schedule, tick: datetime, region: str, *, event_id: str | None = None
                    ) -> dict[str, Any]:
    """What ``schedule``'s function gets for ``tick``: its ``input`` verbatim if it has one."""
    if schedule.input is not None:
        return dict(schedule.input)
    time = iso(tick)
    return {
        "version": "0",
        "id": event_id or str(uuid.uuid5(NAMESPACE, f"{schedule.name}/{time}")),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": ACCOUNT_ID,
        "time": time,
        "region": region,
        "resources": [rule_arn(schedule, region)],
        "detail": {},
    }


__all__ = ["NAMESPACE", "iso", "rule_arn", "scheduled_event"]
