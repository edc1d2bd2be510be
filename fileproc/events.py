"""ObjectEvent: what every notification source is turned into.

Webhooks, queues, the folder watcher, ``fileproc put`` and backfill all
produce the same ``ObjectEvent``; the rest of fileproc never sees a raw
notification. :meth:`ObjectEvent.to_record` turns it back into the AWS S3
event record a Lambda-style handler expects.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote_plus

PRINCIPAL = "fileproc"
"""The principal fileproc names in an event record's ``userIdentity`` and ``ownerIdentity``."""


def normalize_etag(etag: str | None) -> str | None:
    """ETags arrive quoted (``"abc"``) from some sources and bare from others."""
    if etag is None:
        return None
    etag = etag.strip().strip('"')
    return etag or None


@dataclass(frozen=True)
class ObjectEvent:
    """One change to one object. ``key`` is always decoded."""

    bucket: str
    key: str
    event_name: str = "s3:ObjectCreated:Put"
    size: int | None = None
    etag: str | None = None
    version_id: str | None = None
    sequencer: str | None = None
    time: datetime = field(default_factory=lambda: datetime.now(UTC))
    content_type: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    source: str = "webhook"

    def __post_init__(self) -> None:
        if not self.event_name.startswith("s3:"):
            object.__setattr__(self, "event_name", f"s3:{self.event_name}")
        object.__setattr__(self, "etag", normalize_etag(self.etag))

    @property
    def is_creation(self) -> bool:
        return self.event_name.startswith("s3:ObjectCreated:")

    @property
    def is_removal(self) -> bool:
        return self.event_name.startswith("s3:ObjectRemoved:")

    @property
    def version(self) -> str:
        """What tells two versions of one key apart: version id, else etag.

        A removal carries neither on an unversioned bucket: it is told apart by
        its sequencer (or time), so deleting a key again later is a new job.
        """
        if self.version_id or self.etag or self.is_creation:
            return self.version_id or self.etag or ""
        return f"removed:{self.sequencer or self.time.isoformat()}"

    def to_record(self, *, region: str = "", configuration_id: str = "fileproc") -> dict[str, Any]:
        """The AWS S3 notification record (``event["Records"][0]`` in Lambda), every field AWS sends.

        The key is URL-encoded (spaces as ``+``), as AWS encodes it; ``region``
        is the store's (``awsRegion``), ``configuration_id`` names the
        notification rule (fileproc passes the pipeline's name).
        """
        obj: dict[str, Any] = {"key": quote_plus(self.key, safe="/"), "size": self.size or 0}
        if self.etag:
            obj["eTag"] = self.etag
        if self.version_id:
            obj["versionId"] = self.version_id
        obj["sequencer"] = self.sequencer or f"{int(self.time.timestamp() * 1_000_000):016X}"
        request_id = hashlib.sha1(f"{self.bucket}/{self.key}/{self.version}".encode()).hexdigest()
        return {
            "eventVersion": "2.1",
            "eventSource": "aws:s3",
            "awsRegion": region,
            "eventTime": self.time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
            "eventName": self.event_name.removeprefix("s3:"),
            "userIdentity": {"principalId": PRINCIPAL},
            "requestParameters": {"sourceIPAddress": "127.0.0.1"},
            "responseElements": {"x-amz-request-id": request_id[:16].upper(), "x-amz-id-2": request_id},
            "s3": {
                "s3SchemaVersion": "1.0",
                "configurationId": configuration_id,
                "bucket": {"name": self.bucket, "ownerIdentity": {"principalId": PRINCIPAL},
                           "arn": f"arn:aws:s3:::{self.bucket}"},
                "object": obj,
            },
        }

    def to_dict(self) -> dict[str, Any]:
        # Field by field, not dataclasses.asdict: asdict deep-copies, and the receiver
        # calls this once per recorded event (it was a fifth of a job's insert cost).
        data = {name: getattr(self, name) for name in _FIELDS}
        data["time"] = self.time.isoformat()
        data["metadata"] = dict(self.metadata)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ObjectEvent:
        """Inverse of :meth:`to_dict`; tolerates missing fields (old queued work)."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if isinstance(known.get("time"), str):
            known["time"] = datetime.fromisoformat(known["time"])
        return cls(**known)


_FIELDS = tuple(f.name for f in fields(ObjectEvent))
