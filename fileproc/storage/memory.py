"""Objects in a dict: a fast backend for unit tests.

It passes the same contract suite as the real backends, holds everything in
this process's memory (so it is for tests and small tools, not for ``serve``:
a worker process would not see what another one wrote), and is thread-safe.
The etag is the md5 of the content, as S3 gives for a single-part upload.

With ``versioned=True`` it keeps every version like a versioned S3 bucket:
each ``put`` makes a new version with its own id, ``delete`` hides the object
(old versions stay readable by id). Without, objects have no version id and a
read naming one raises ObjectNotFound, like local storage.

>>> storage = MemoryStorage(versioned=True)
>>> storage.ensure_bucket("uploads")
>>> first = storage.put("uploads", "a.txt", b"one")
>>> _ = storage.put("uploads", "a.txt", b"two")
>>> storage.open("uploads", "a.txt", version_id=first.version_id).read()
b'one'
"""

from __future__ import annotations

import builtins
import hashlib
import io
import itertools
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from fileproc.errors import BucketNotFound, ObjectNotFound, StorageError
from fileproc.storage import ObjectInfo, PutSource, Storage

CHUNK = 1024 * 1024


@dataclass(frozen=True)
class _Version:
    data: bytes
    info: ObjectInfo


class MemoryStorage(Storage):
    """Buckets of objects in a dict, guarded by one lock."""

    name = "memory"

    def __init__(self, *, versioned: bool = False) -> None:
        self.versioned = versioned
        self._lock = threading.Lock()
        # bucket -> key -> versions, oldest first; None marks a delete (versioned only).
        self._buckets: dict[str, dict[str, list[_Version | None]]] = {}
        self._ids = itertools.count(1)

    # --- reading -------------------------------------------------------------------------

    def _do_head(self, bucket: str, key: str, version_id: str | None) -> ObjectInfo:
        return self._find(bucket, key, version_id).info

    def _do_read(self, bucket: str, key: str, version_id: str | None) -> tuple[ObjectInfo, IO[bytes]]:
        found = self._find(bucket, key, version_id)
        return found.info, io.BytesIO(found.data)

    def _do_list(self, bucket: str, prefix: str, *, possible: bool) -> Iterator[ObjectInfo]:
        with self._lock:
            objects = self._bucket(bucket)
            # A snapshot, so writers are not blocked while the caller iterates.
            current = [(key, history[-1]) for key, history in objects.items() if key.startswith(prefix)]
        if not possible:
            return
        for key, latest in sorted(current, key=lambda item: item[0]):
            if latest is not None:
                info = latest.info
                yield ObjectInfo(bucket, key, info.size, info.etag, last_modified=info.last_modified)

    # --- writing -------------------------------------------------------------------------

    def _do_put(self, bucket: str, key: str, source: PutSource, content_type: str,
                metadata: dict[str, str]) -> ObjectInfo:
        with self._lock:
            self._bucket(bucket)  # fail fast, before reading the source
        data = _read_all(source)
        with self._lock:
            objects = self._bucket(bucket)
            info = ObjectInfo(
                bucket=bucket,
                key=key,
                size=len(data),
                etag=hashlib.md5(data, usedforsecurity=False).hexdigest(),
                content_type=content_type,
                last_modified=datetime.now(UTC),
                version_id=f"v{next(self._ids):08d}" if self.versioned else None,
                metadata=dict(metadata),
            )
            version = _Version(data, info)
            if self.versioned:
                objects.setdefault(key, []).append(version)
            else:
                objects[key] = [version]
        return replace(info, metadata=dict(metadata))

    def _do_delete(self, bucket: str, key: str) -> None:
        with self._lock:
            objects = self._bucket(bucket)
            history = objects.get(key)
            if not history:
                return
            if not self.versioned:
                del objects[key]
            elif history[-1] is not None:
                history.append(None)

    def _do_ensure_bucket(self, bucket: str) -> None:
        with self._lock:
            self._buckets.setdefault(bucket, {})

    def _do_list_buckets(self) -> list[str]:
        with self._lock:
            return list(self._buckets)

    def check(self) -> None:
        """Always usable."""

    # --- helpers -------------------------------------------------------------------------

    def _bucket(self, bucket: str) -> dict[str, list[_Version | None]]:
        try:
            return self._buckets[bucket]
        except KeyError:
            raise BucketNotFound(f"bucket {bucket!r} does not exist") from None

    def _find(self, bucket: str, key: str, version_id: str | None) -> _Version:
        with self._lock:
            history = self._bucket(bucket).get(key) or []
            if version_id is None:
                found = history[-1] if history else None
            else:
                found = next((v for v in history if v is not None and v.info.version_id == version_id), None)
        if found is None:
            which = f"version {version_id!r} of " if version_id is not None else ""
            raise ObjectNotFound(f"no object {which}{key!r} in bucket {bucket!r}")
        # A copy of the metadata: callers may change what they get without changing the store.
        return _Version(found.data, replace(found.info, metadata=dict(found.info.metadata)))


def _read_all(source: PutSource) -> bytes:
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source)
    if isinstance(source, Path):
        try:
            with builtins.open(source, "rb") as file:
                return file.read()
        except OSError as exc:
            raise StorageError(f"cannot read {source}: {exc.strerror or exc}") from exc
    buffer = io.BytesIO()
    while chunk := source.read(CHUNK):
        buffer.write(chunk)
    return buffer.getvalue()
