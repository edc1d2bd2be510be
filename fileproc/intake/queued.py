"""Bucket notifications that arrive through a queue (Kafka, NATS JetStream, Redis, RabbitMQ), not the webhook.

MinIO, Ceph and AWS can publish bucket notifications to a broker, which
keeps them while fileproc is away: for many deployments the durable path. A
``[[streams]]`` mapping with ``kind = "notifications"`` reads them
(:mod:`fileproc.streams`) and hands each batch's bodies to
:func:`submit_notifications`: parsed as the webhook parses them, matched,
completed from a HEAD where the notification left out the size or eTag,
and recorded through the one intake path (``service.submit``), with the
same deduplication. Only then is the batch committed.

A body is MinIO's notification as it publishes it to Kafka, NATS and AMQP
(``{"EventName": ..., "Key": ..., "Records": [...]}``, the webhook's), or
an entry of its ``notify_redis`` list with ``format=access``: a JSON array
``[{"Event": [records...], "EventTime": ...}]``, whose records are taken as
``Records``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from fileproc.events import ObjectEvent
from fileproc.intake.notifications import BadNotification, parse_body
from fileproc.jsonbody import BadJSON, loads
from fileproc.objects import candidates, complete, needs_head
from fileproc.service import Service

log = logging.getLogger(__name__)


@dataclass
class Submitted:
    """What came of one batch of notification bodies."""

    events: int = 0
    jobs: int = 0
    rejected: list[str] = field(default_factory=list)  # bodies or records that are no notification, and why


def submit_notifications(service: Service, bodies: Iterable[bytes], *, source: str = "queue") -> Submitted:
    """Record the events of ``bodies`` (each one notification, as MinIO publishes it); FileprocError if not recorded.

    A body that is no notification is rejected with its reason (logged and
    returned), never retried: it would never become one.
    """
    done = Submitted()
    pipelines = list(service.pipelines.values())
    wanted: list[ObjectEvent] = []
    incomplete: list[ObjectEvent] = []
    for body in bodies:
        try:
            parsed = parse_body(_notification(body), source)
        except BadNotification as exc:
            done.rejected.append(str(exc))
            continue
        done.rejected += parsed.rejected
        for event in parsed.events:
            found = candidates(pipelines, event)
            if found:
                (incomplete if needs_head(event, pipelines, found) else wanted).append(event)
        done.events += len(parsed.events)
    for reason in done.rejected:
        log.warning("rejected a queued notification: %s", reason)
    if incomplete:
        wanted += complete(service.storage, pipelines, incomplete)
    if wanted:
        done.jobs = sum(1 for item in service.submit(wanted, completed=True) if item.created)
    return done


def _notification(body: bytes) -> dict[str, Any]:
    """``body`` parsed, MinIO's access-format Redis entry made a notification with ``Records``."""
    try:
        data = loads(body)
    except BadJSON as exc:
        raise BadNotification(str(exc)) from exc
    if isinstance(data, list) and data and all(isinstance(item, dict) and "Event" in item for item in data):
        records = [record for item in data for record in
                   (item["Event"] if isinstance(item["Event"], list) else [item["Event"]])]
        return {"Records": records}
    if not isinstance(data, dict):
        raise BadNotification("body is not a JSON object (nor MinIO's access-format list)")
    return data


__all__ = ["Submitted", "submit_notifications"]
