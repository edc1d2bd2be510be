"""Object storage: one small interface, one module per backend.

A backend SHALL:

- stream: ``open`` returns a file-like object read in chunks, never the whole
  object in memory; ``put`` accepts a stream, a path or bytes;
- make writes atomic: a reader sees the old object or the whole new one,
  never a partial object;
- translate its own exceptions into :mod:`fileproc.errors` (``ObjectNotFound``,
  ``BucketNotFound``, ``StorageUnavailable`` for anything transient) with
  ``raise ... from`` and without secrets in the message.

A backend MAY keep metadata however it likes, as long as ``head`` returns what
``put`` stored (lower-case keys, without the ``x-amz-meta-`` prefix).

Backends: :mod:`.local` (buckets are folders; the embedded default) and
:mod:`.s3` (any S3-compatible store through the ``minio`` SDK).
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from fileproc.config import Settings

PutSource = bytes | Path | IO[bytes]
"""What ``Storage.put`` accepts: the bytes, a local file, or a readable stream."""


@dataclass(frozen=True)
class ObjectInfo:
    """What the store knows about one object."""

    bucket: str
    key: str
    size: int
    etag: str
    content_type: str = "application/octet-stream"
    last_modified: datetime | None = None
    version_id: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)


class Storage(abc.ABC):
    """An S3-shaped object store."""

    name: str = "?"

    @abc.abstractmethod
    def head(self, bucket: str, key: str) -> ObjectInfo:
        """The object's size, etag, content type and metadata. Raises ObjectNotFound."""

    @abc.abstractmethod
    def open(self, bucket: str, key: str) -> IO[bytes]:
        """A stream of the object's bytes; close it when done (use ``with``)."""

    @abc.abstractmethod
    def download(self, bucket: str, key: str, path: Path) -> ObjectInfo:
        """Copy the object to a local file, streaming. Returns what was read."""

    @abc.abstractmethod
    def put(
        self,
        bucket: str,
        key: str,
        source: PutSource,
        *,
        content_type: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> ObjectInfo:
        """Write an object atomically and return its info (with the new etag)."""

    @abc.abstractmethod
    def delete(self, bucket: str, key: str) -> None:
        """Remove an object; removing a missing object is not an error."""

    @abc.abstractmethod
    def list(self, bucket: str, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object under ``prefix``, recursively, in key order."""

    @abc.abstractmethod
    def ensure_bucket(self, bucket: str) -> None:
        """Create the bucket if it does not exist."""

    @abc.abstractmethod
    def check(self) -> None:
        """Raise StorageUnavailable (with a plain reason) if the store cannot be used."""




def open_storage(settings: "Settings") -> Storage:  # noqa: UP037
    """The storage backend the settings name."""
    if settings.storage.backend == "s3":
        from fileproc.storage.s3 import S3Storage

        return S3Storage(
            endpoint=settings.storage.endpoint,
            access_key=settings.storage.access_key.get_secret_value(),
            secret_key=settings.storage.secret_key.get_secret_value(),
            secure=settings.storage.secure,
            region=settings.storage.region or None,
        )
    from fileproc.storage.local import LocalStorage

    return LocalStorage(settings.buckets_dir, tmp_dir=settings.data_dir / "tmp")


__all__ = ["ObjectInfo", "PutSource", "Storage", "open_storage"]
