"""Bucket notification bodies -> ObjectEvents.

Understands the S3 event shape every store sends in its own dialect:

- AWS S3, versitygw, Ceph RGW: ``{"Records": [{"eventName": "ObjectCreated:Put", "s3": {...}}]}``
- MinIO webhooks: the same ``Records`` plus ``EventName``/``Key`` at the top,
  ``s3:``-prefixed event names and ``userMetadata`` on the object;
- test probes (``{"Event": "s3:TestEvent"}``), which carry no object.

Keys arrive URL-encoded the way AWS encodes them (``+`` for a space, ``%XX``
for the rest) and are decoded here, once. Some senders (versitygw) send keys
as they are; for those, pass ``raw_keys=True`` (``?keys=raw`` on the webhook
URL), so a literal ``+`` stays a ``+``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_plus

from fileproc.errors import FileprocError
from fileproc.events import ObjectEvent
from fileproc.jsonbody import BadJSON, loads
from fileproc.objects import event_for, name_problem


class BadNotification(FileprocError):
    """The body is not a bucket notification we understand."""


class BadKey(BadNotification):
    """A record names an object no store may hold; refused for good (a retry would not help)."""


class TooManyRecords(BadNotification):
    """The body carries more records than the receiver takes at once."""


@dataclass
class Parsed:
    """What one notification body held."""

    events: list[ObjectEvent] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    test: bool = False


_META_PREFIX = "x-amz-meta-"


def _metadata(obj: dict[str, Any]) -> dict[str, str]:
    raw = obj.get("userMetadata") or {}
    out = {}
    for name, value in raw.items() if isinstance(raw, dict) else []:
        name = str(name).lower()
        if name.startswith(_META_PREFIX):
            out[name[len(_META_PREFIX):]] = str(value)
    return out


def _time(value: Any) -> datetime:
    if isinstance(value, str) and value:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
        except ValueError:
            pass
    return datetime.now(UTC)


def parse_record(record: dict[str, Any], source: str = "webhook", *, raw_keys: bool = False) -> ObjectEvent:
    """One ``Records[]`` item. Raises BadNotification naming what is missing."""
    if not isinstance(record, dict):
        raise BadNotification("a record is not a JSON object")
    s3 = record.get("s3")
    name = record.get("eventName")
    if not isinstance(s3, dict) or not isinstance(name, str):
        raise BadNotification("record has no 's3' object or 'eventName'")
    bucket = (s3.get("bucket") or {}).get("name")
    obj = s3.get("object") or {}
    key = obj.get("key")
    if not isinstance(bucket, str) or not bucket or not isinstance(key, str) or not key:
        raise BadNotification("record has no bucket name or object key")
    if not raw_keys:
        key = unquote_plus(key)
    problem = name_problem(bucket, key)
    if problem:
        raise BadKey(problem)
    size = obj.get("size")
    return event_for(
        bucket,
        key,
        event_name=name,
        size=int(size) if isinstance(size, int | float | str) and str(size).isdigit() else None,
        etag=obj.get("eTag") or obj.get("etag") or None,
        version_id=obj.get("versionId") or None,
        sequencer=obj.get("sequencer") or None,
        time=_time(record.get("eventTime")),
        content_type=obj.get("contentType") or None,
        metadata=_metadata(obj),
        source=source,
    )


def parse_body(body: bytes | str | dict[str, Any], source: str = "webhook", *, raw_keys: bool = False,
               max_records: int | None = None) -> Parsed:
    """Every event in one notification body.

    Records that cannot be read (or name a key no store may hold: ``.``/``..``
    segments, NUL, over 1,024 bytes) are listed in ``rejected`` with the
    reason, and never retried; a body with nothing usable at all raises
    BadNotification, one with more than ``max_records`` records TooManyRecords.
    """
    if isinstance(body, bytes | str):
        try:
            data = loads(body)  # (bounded: a body nested 10,000 deep is a reason, not a RecursionError)
        except BadJSON as exc:
            raise BadNotification(str(exc)) from exc
    else:
        data = body
    if not isinstance(data, dict):
        raise BadNotification("body is not a JSON object")
    if data.get("Event") == "s3:TestEvent" or data.get("EventName") == "s3:TestEvent":
        return Parsed(test=True)
    records = data.get("Records")
    if not isinstance(records, list):
        raise BadNotification("body has no 'Records' list (not an S3 event notification)")
    if max_records is not None and len(records) > max_records:
        raise TooManyRecords(f"{len(records)} records in one body; at most {max_records} (api.max_records)")
    parsed = Parsed()
    unreadable = 0
    for index, record in enumerate(records):
        try:
            parsed.events.append(parse_record(record, source, raw_keys=raw_keys))
        except BadNotification as exc:
            unreadable += not isinstance(exc, BadKey)
            parsed.rejected.append(f"Records[{index}]: {exc}")
    # Bad keys are answered (with their reasons) like good records, so a sender never retries them.
    if records and not parsed.events and unreadable:
        raise BadNotification("; ".join(parsed.rejected))
    return parsed
