"""Object storage: one small interface, one module per backend.

:class:`Storage` holds the rules every backend shares and applies them once,
in its public methods, before calling the backend's ``_do_*`` methods:

- **names**: a bucket name follows S3's rules (3-63 characters: lower-case
  letters, digits, ``.`` and ``-``); a key is 1-1024 bytes of UTF-8 that a
  folder could hold too (no NUL, no leading ``/``, no empty, ``.`` or ``..``
  segment). A name one backend could not store is refused by all of them
  (:class:`InvalidName`), so a pipeline that works on one works on the others.
- **metadata**: names lower-cased, values turned into ``str`` with surrounding
  blanks stripped (HTTP would strip them), both plain printable ASCII and at
  most 2 KiB in all, as S3 carries metadata in HTTP headers; anything else is
  refused on every backend (:class:`InvalidMetadata`).
- **content type**: when ``put`` is given none, it is guessed from the key
  (``photos/cat.jpg`` -> ``image/jpeg``), else ``application/octet-stream``.
- **version ids**: ``None`` (or ``""``) means the current version. A store
  without versions (local, an unversioned bucket) has no version ids: its
  objects' ``version_id`` is ``None`` and a read naming a version that is not
  there raises :class:`ObjectNotFound`.
- **listing**: ``list`` yields the current objects with, on every backend,
  ``bucket``, ``key``, ``size``, ``etag`` and ``last_modified``, and nothing
  else: S3's ListObjects carries no content type, metadata or version id, and
  fetching them would cost a request per object. So ``content_type`` keeps the
  default ``application/octet-stream``, ``metadata`` is empty and
  ``version_id`` is ``None`` in every listing; ``head`` an object for them.
  Listing never reads an object's bytes.

A backend SHALL:

- stream: ``_do_read`` returns a file-like object read in chunks, never the
  whole object in memory (the in-memory backend excepted); ``_do_put`` accepts
  a stream, a path or bytes;
- make writes atomic: a reader sees the old object or the whole new one,
  never a partial object;
- give the same etag in ``head``, ``list`` and ``put`` for the same bytes
  (for an object written by ``put``, the md5 of its bytes when stored in one
  part, as S3 does);
- translate its own exceptions into :mod:`fileproc.errors` (``ObjectNotFound``,
  ``BucketNotFound``, ``StorageUnavailable`` for anything transient) with
  ``raise ... from`` and without secrets in the message.

A backend MAY keep metadata however it likes, as long as ``head`` returns what
``put`` stored.

Backends: :mod:`.local` (buckets are folders; the embedded default),
:mod:`.s3` (any S3-compatible store through the ``minio`` SDK) and
:mod:`.memory` (a dict; for tests).
"""

from __future__ import annotations

import abc
import builtins
import ipaddress
import mimetypes
import re
import shutil
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from fileproc.errors import InvalidMetadata, InvalidName, StorageError

if TYPE_CHECKING:
    from fileproc.config import Settings

PutSource = bytes | Path | IO[bytes]
"""What ``Storage.put`` accepts: the bytes, a local file, or a readable stream."""

DEFAULT_CONTENT_TYPE = "application/octet-stream"

MAX_KEY_BYTES = 1024
"""S3's limit on a key's length in UTF-8."""

MAX_METADATA_BYTES = 2048
"""S3's limit on the user metadata of one object (names and values, in bytes)."""

CHUNK = 1024 * 1024
"""Bytes copied per step when downloading to a file."""

_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
# An HTTP header name ("token" in RFC 9110): what a metadata name may be.
_METADATA_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+")


@dataclass(frozen=True)
class ObjectInfo:
    """What the store knows about one object."""

    bucket: str
    key: str
    size: int
    etag: str
    content_type: str = DEFAULT_CONTENT_TYPE
    last_modified: datetime | None = None
    version_id: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)


class Storage(abc.ABC):
    """An S3-shaped object store.

    The public methods check names and normalise arguments, then call the
    backend's ``_do_*`` methods, which may assume valid arguments.
    """

    name: str = "?"

    # --- the interface -------------------------------------------------------------------

    def head(self, bucket: str, key: str, version_id: str | None = None) -> ObjectInfo:
        """The object's size, etag, content type and metadata.

        Raises ObjectNotFound (also for a ``version_id`` the store does not have).
        """
        check_bucket_name(bucket)
        check_key(key)
        return self._do_head(bucket, key, version_id or None)

    def open(self, bucket: str, key: str, version_id: str | None = None) -> IO[bytes]:
        """A stream of the object's bytes; close it when done (use ``with``)."""
        check_bucket_name(bucket)
        check_key(key)
        return self._do_read(bucket, key, version_id or None)[1]

    def open_if(self, bucket: str, key: str, etag: str | None) -> tuple[ObjectInfo, IO[bytes]] | None:
        """The object's info and a stream of its bytes if its etag is still ``etag``; None if it changed.

        One request on S3 (a GET with ``If-Match``): a reader learns in one
        answer whether the object is still the version it was told about, what
        it holds (size, content type, metadata: HEAD's headers) and its bytes.
        ``etag`` None reads whatever is current. Raises ObjectNotFound when the
        object is gone. Close the stream when done, read or not.
        """
        check_bucket_name(bucket)
        check_key(key)
        return self._do_read_if(bucket, key, etag or None)

    def download(self, bucket: str, key: str, path: Path, version_id: str | None = None) -> ObjectInfo:
        """Copy the object to a local file, streaming. Returns what was read."""
        check_bucket_name(bucket)
        check_key(key)
        info, source = self._do_read(bucket, key, version_id or None)
        with source:
            try:
                with open(path, "wb") as target:
                    shutil.copyfileobj(source, target, CHUNK)
            except OSError as exc:
                raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from exc
        return info

    def put(
        self,
        bucket: str,
        key: str,
        source: PutSource,
        *,
        content_type: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> ObjectInfo:
        """Write an object atomically and return its info (with the new etag).

        ``content_type`` defaults to a guess from the key; ``metadata`` is
        normalised as the module docstring says.
        """
        check_bucket_name(bucket)
        check_key(key)
        return self._do_put(bucket, key, source, normalize_content_type(content_type, key),
                            normalize_metadata(metadata))

    def delete(self, bucket: str, key: str) -> None:
        """Remove an object; removing a missing object is not an error."""
        check_bucket_name(bucket)
        check_key(key)
        self._do_delete(bucket, key)

    def list(self, bucket: str, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object under ``prefix``, recursively, in key order (UTF-8 bytes, as S3).

        Names are checked at once; a missing bucket raises BucketNotFound when
        the listing is read. A prefix no valid key can start with lists nothing.
        """
        check_bucket_name(bucket)
        if "\0" in prefix:
            raise InvalidName(f"invalid prefix {prefix!r}: contains NUL")
        return self._do_list(bucket, prefix, possible=prefix_is_possible(prefix))

    def ensure_bucket(self, bucket: str) -> None:
        """Create the bucket if it does not exist."""
        check_bucket_name(bucket)
        self._do_ensure_bucket(bucket)

    def list_buckets(self) -> builtins.list[str]:  # `list` here is the method above
        """Every bucket's name, sorted; names no bucket may have (a stray local folder) are left out."""
        return sorted(name for name in self._do_list_buckets() if is_bucket_name(name))

    @abc.abstractmethod
    def check(self) -> None:
        """Raise StorageUnavailable (with a plain reason) if the store cannot be used."""

    # --- what a backend implements ---------------------------------------------------------

    @abc.abstractmethod
    def _do_head(self, bucket: str, key: str, version_id: str | None) -> ObjectInfo:
        """The object's info; ObjectNotFound / BucketNotFound when absent."""

    @abc.abstractmethod
    def _do_read(self, bucket: str, key: str, version_id: str | None) -> tuple[ObjectInfo, IO[bytes]]:
        """The object's info and a stream of exactly the bytes it describes."""

    def _do_read_if(self, bucket: str, key: str, etag: str | None) -> tuple[ObjectInfo, IO[bytes]] | None:
        """:meth:`open_if`; this default reads and compares (a store with conditional reads asks it instead)."""
        info, stream = self._do_read(bucket, key, None)
        if etag is not None and info.etag != etag:
            stream.close()
            return None
        return info, stream

    @abc.abstractmethod
    def _do_put(self, bucket: str, key: str, source: PutSource, content_type: str,
                metadata: dict[str, str]) -> ObjectInfo:
        """Store the object atomically; the arguments are already normalised."""

    @abc.abstractmethod
    def _do_delete(self, bucket: str, key: str) -> None:
        """Remove the (current version of the) object; missing is fine, a missing bucket is not."""

    @abc.abstractmethod
    def _do_list(self, bucket: str, prefix: str, *, possible: bool) -> Iterator[ObjectInfo]:
        """The listing as the module docstring describes it.

        ``possible`` is False for a prefix no valid key starts with: the
        backend still raises BucketNotFound for a missing bucket, then yields
        nothing.
        """

    @abc.abstractmethod
    def _do_ensure_bucket(self, bucket: str) -> None:
        """Create the bucket unless it exists."""

    @abc.abstractmethod
    def _do_list_buckets(self) -> Iterable[str]:
        """The names of the store's buckets, in any order."""


# --- the shared rules --------------------------------------------------------------------


def check_bucket_name(bucket: str) -> None:
    """Refuse a bucket name S3 would refuse (which also keeps it one plain folder)."""
    if not isinstance(bucket, str) or not _BUCKET_NAME.fullmatch(bucket):
        raise InvalidName(
            f"invalid bucket name {bucket!r}: use 3-63 lower-case letters, digits, '.' and '-', "
            "starting and ending with a letter or digit"
        )
    if ".." in bucket or ".-" in bucket or "-." in bucket:
        raise InvalidName(f"invalid bucket name {bucket!r}: '..', '.-' and '-.' are not allowed")
    try:
        ipaddress.IPv4Address(bucket)
    except ValueError:
        return
    raise InvalidName(f"invalid bucket name {bucket!r}: it looks like an IP address")


def is_bucket_name(name: str) -> bool:
    """Whether ``name`` passes :func:`check_bucket_name`."""
    try:
        check_bucket_name(name)
    except InvalidName:
        return False
    return True


def check_key(key: str) -> None:
    """Refuse a key that is not a plain relative path of at most 1024 UTF-8 bytes."""
    what = f"object key {key!r}"
    if not isinstance(key, str) or not key:
        raise InvalidName(f"invalid {what}: empty")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidName(f"invalid {what}: not valid UTF-8") from None
    if size > MAX_KEY_BYTES:
        raise InvalidName(f"invalid object key {key[:40]!r}...: longer than {MAX_KEY_BYTES} bytes")
    if "\0" in key:
        raise InvalidName(f"invalid {what}: contains NUL")
    if key.startswith("/"):
        raise InvalidName(f"invalid {what}: absolute paths are not allowed")
    if any(segment in ("", ".", "..") for segment in key.split("/")):
        raise InvalidName(
            f"invalid {what}: empty, '.' and '..' path segments are not allowed (keys stay inside their bucket)"
        )


def prefix_is_possible(prefix: str) -> bool:
    """Whether some valid key could start with ``prefix`` (its complete segments are valid)."""
    if prefix.startswith("/"):
        return False
    *folders, _ = prefix.split("/")
    return all(segment not in ("", ".", "..") for segment in folders)


def normalize_content_type(content_type: str | None, key: str) -> str:
    """The given content type (checked), or a guess from the key."""
    if content_type is None or not str(content_type).strip():
        return guess_content_type(key)
    content_type = str(content_type).strip()
    if not _printable_ascii(content_type):
        raise InvalidMetadata(f"invalid content type {content_type!r}: must be plain printable ASCII")
    return content_type


def guess_content_type(key: str) -> str:
    """The content type a key's extension suggests, else ``application/octet-stream``."""
    return mimetypes.guess_type(key, strict=False)[0] or DEFAULT_CONTENT_TYPE


def normalize_metadata(metadata: Mapping[str, Any] | None) -> dict[str, str]:
    """Lower-case names, ``str`` values without surrounding blanks; refuse what S3 cannot carry.

    >>> normalize_metadata({"Camera": "X100", "iso": 200})
    {'camera': 'X100', 'iso': '200'}
    """
    result: dict[str, str] = {}
    for raw_name, raw_value in (metadata or {}).items():
        name, value = str(raw_name).strip().lower(), str(raw_value).strip()
        if not _METADATA_NAME.fullmatch(name):
            raise InvalidMetadata(
                f"invalid metadata name {raw_name!r}: use ASCII letters, digits and '-' "
                "(metadata travels in HTTP headers on S3)"
            )
        if not _printable_ascii(value):
            raise InvalidMetadata(
                f"invalid metadata value for {name!r}: must be plain printable ASCII "
                "(metadata travels in HTTP headers on S3; percent-encode other text)"
            )
        if name in result:
            raise InvalidMetadata(f"metadata name {name!r} given twice (names are not case-sensitive)")
        result[name] = value
    total = sum(len(name) + len(value) for name, value in result.items())
    if total > MAX_METADATA_BYTES:
        raise InvalidMetadata(f"metadata too large: {total} bytes, at most {MAX_METADATA_BYTES}")
    return result


def _printable_ascii(text: str) -> bool:
    return all(" " <= char <= "~" for char in text)


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


__all__ = [
    "DEFAULT_CONTENT_TYPE",
    "MAX_KEY_BYTES",
    "MAX_METADATA_BYTES",
    "InvalidMetadata",
    "InvalidName",
    "ObjectInfo",
    "PutSource",
    "Storage",
    "check_bucket_name",
    "check_key",
    "guess_content_type",
    "is_bucket_name",
    "normalize_content_type",
    "normalize_metadata",
    "open_storage",
]
