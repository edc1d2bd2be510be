"""Any S3-compatible store (MinIO, versitygw, Ceph RGW, AWS S3) through the ``minio`` SDK.

Everything the SDK or urllib3 raises is translated here, at the boundary:
``NoSuchKey`` -> :class:`ObjectNotFound`, ``NoSuchBucket`` ->
:class:`BucketNotFound`, a store that cannot be reached (refused, timed out,
5xx after retries) -> :class:`StorageUnavailable`, anything else ->
:class:`StorageError`. Messages name the endpoint, bucket and key, never the
credentials.

The HTTP client gives up quickly (a few seconds for a dead endpoint) so a
step fails and is retried by the runtime instead of hanging a worker.

A conditional read (``open_if``) is one GET with ``If-Match``: the store's
412 (PreconditionFailed) means another version is current, and is no error.

Versions: reads pass ``version_id`` to the store; on a versioned bucket
``head``, ``download`` and ``put`` report the version id. A version the store
does not have is ObjectNotFound, whatever the store calls it (NoSuchVersion,
or versitygw's 400 for an id it never issued or any id on an unversioned
bucket). One difference stays the store's: S3 names an object written while
its bucket had no versioning ``"null"``, and some stores serve that id.
"""

from __future__ import annotations

import contextlib
import io
import socket
import ssl
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import IO, Any, NoReturn

import urllib3
from minio import Minio
from minio.error import InvalidResponseError, S3Error, ServerError
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import MaxRetryError

from fileproc.errors import BucketNotFound, ObjectNotFound, StorageError, StorageUnavailable
from fileproc.storage import DEFAULT_CONTENT_TYPE, ObjectInfo, PutSource, Storage

PART_SIZE = 16 * 1024 * 1024
"""Multipart part size: objects above it are uploaded in parts of this size."""

PARALLEL_PARTS_FILE = 2
"""Parts of a file upload sent at once; it holds about one part more than this in memory."""

PARALLEL_PARTS_STREAM = 1
"""Parts of a stream of unknown length sent at once. The SDK copies each part
about three times while cutting it from such a stream (~48 MiB at 16 MiB
parts), so one part at a time keeps an upload's memory bounded and small."""

CONNECT_TIMEOUT = 2.0
"""Seconds to open a connection. A refused connection fails at once; an endpoint
that does not answer at all fails after (RETRIES + 1) of these."""

READ_TIMEOUT = 30.0
"""Seconds to wait for the next bytes of an answer (not for the whole body). A
store that accepts connections but never answers fails after two of these."""

RETRIES = 2
"""Extra attempts for a failed connection or a 5xx answer, with short backoff."""

CHUNK = 1024 * 1024
"""Read size when streaming a download."""

META_PREFIX = "x-amz-meta-"
CREDENTIAL_ERRORS = frozenset({
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
    "XAdminUserNotFound",  # versitygw's answer to an unknown access key
})
VERSION_NOT_FOUND = frozenset({"NoSuchVersion", "NoSuchKey", "InvalidArgument", "BadRequest"})
"""What stores answer a read of a version they do not have: versitygw says 400
InvalidArgument (BadRequest for a HEAD) for an id that is not one of its ids,
or any id on an unversioned bucket."""
BUSY_ERRORS = frozenset({"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout"})
"""S3 error codes that mean "try again later" rather than "no"."""


class S3Storage(Storage):
    """An S3 endpoint as fileproc storage.

    ``endpoint`` is ``host:port`` (no scheme; ``secure`` picks https);
    ``session_token`` goes with temporary (STS) credentials. The
    timeouts bound how long a dead or hung store can hold a caller; see
    CONNECT_TIMEOUT and READ_TIMEOUT.

    >>> storage = S3Storage(endpoint="127.0.0.1:7070", access_key="ak", secret_key="sk", secure=False)
    >>> storage.check()
    """

    name = "s3"

    def __init__(
        self,
        *,
        endpoint: str,
        access_key: str,
        secret_key: str,
        session_token: str | None = None,
        secure: bool = True,
        region: str | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
    ) -> None:
        self.endpoint = endpoint
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            # Enough for the parallel parts of a few concurrent uploads.
            maxsize=10,
            # TLS is verified against the system's trust store, where a
            # self-hosted store's private CA is usually installed.
            cert_reqs="CERT_REQUIRED",
            retries=urllib3.Retry(
                total=RETRIES,
                # A read timeout means a hung store: one more try, not RETRIES more.
                read=1,
                backoff_factor=0.2,
                status_forcelist=(500, 502, 503, 504),
                # minio reads the status itself; raising here would hide the S3 error body.
                raise_on_status=False,
            ),
        )
        try:
            self._client = Minio(
                endpoint,
                access_key=access_key or None,
                secret_key=secret_key or None,
                session_token=session_token or None,
                secure=secure,
                region=region or None,
                http_client=http,
            )
        except ValueError as exc:
            raise StorageError(f"invalid S3 endpoint {endpoint!r}: {exc}") from exc

    # --- reading -------------------------------------------------------------------------

    def _do_head(self, bucket: str, key: str, version_id: str | None) -> ObjectInfo:
        try:
            stat = self._client.stat_object(bucket, key, version_id=version_id)
        except S3Error as exc:
            # A HEAD answer has no body, so the SDK calls every 404 NoSuchKey;
            # ask again to tell a missing bucket from a missing object.
            if exc.code in ("NoSuchKey", "BadRequest") and not self._bucket_exists(bucket):
                raise BucketNotFound(f"bucket {bucket!r} does not exist") from exc
            self._raise(exc, bucket, key, version_id)
        except Exception as exc:
            self._raise(exc, bucket, key, version_id)
        return _info_from_headers(bucket, key, stat.metadata or {})

    def _do_read(self, bucket: str, key: str, version_id: str | None) -> tuple[ObjectInfo, IO[bytes]]:
        try:
            response = self._client.get_object(bucket, key, version_id=version_id)
        except Exception as exc:
            self._raise(exc, bucket, key, version_id)
        # The GET answer carries the same headers as HEAD: one request, and the
        # info describes exactly the bytes read.
        info = _info_from_headers(bucket, key, response.headers)
        raw = _ResponseStream(response, self._raise, bucket, key)
        return info, io.BufferedReader(raw, buffer_size=CHUNK)

    def _do_read_if(self, bucket: str, key: str, etag: str | None) -> tuple[ObjectInfo, IO[bytes]] | None:
        if etag is None:
            return self._do_read(bucket, key, None)
        try:
            response = self._client.get_object(bucket, key, request_headers={"If-Match": f'"{etag}"'})
        except S3Error as exc:
            if exc.code == "PreconditionFailed":  # 412: another version is current now
                return None
            self._raise(exc, bucket, key)
        except Exception as exc:
            self._raise(exc, bucket, key)
        info = _info_from_headers(bucket, key, response.headers)
        stream = io.BufferedReader(_ResponseStream(response, self._raise, bucket, key), buffer_size=CHUNK)
        if info.etag != etag:  # a store that ignores If-Match
            stream.close()
            return None
        return info, stream

    def _do_list(self, bucket: str, prefix: str, *, possible: bool) -> Iterator[ObjectInfo]:
        try:
            if not possible:
                if not self._client.bucket_exists(bucket):
                    raise BucketNotFound(f"bucket {bucket!r} does not exist")
                return
            for obj in self._client.list_objects(bucket, prefix=prefix or None, recursive=True):
                if obj.is_dir or obj.object_name is None:
                    continue
                yield ObjectInfo(
                    bucket=bucket,
                    key=obj.object_name,
                    size=obj.size or 0,
                    etag=(obj.etag or "").strip('"'),
                    last_modified=obj.last_modified,
                )
        except BucketNotFound:
            raise
        except Exception as exc:
            self._raise(exc, bucket)

    # --- writing -------------------------------------------------------------------------

    def _do_put(self, bucket: str, key: str, source: PutSource, content_type: str,
                metadata: dict[str, str]) -> ObjectInfo:
        # Prefixed here so that a name like "cache-control" stays user metadata
        # instead of becoming the HTTP header the SDK would take it for.
        headers: dict[str, Any] = {META_PREFIX + name: value for name, value in metadata.items()}
        options: dict[str, Any] = {"content_type": content_type, "metadata": headers, "part_size": PART_SIZE}
        try:
            if isinstance(source, Path):
                size = _file_size(source)
                result = self._client.fput_object(bucket, key, str(source), num_parallel_uploads=PARALLEL_PARTS_FILE,
                                                  **options)
            elif isinstance(source, bytes | bytearray | memoryview):
                size = len(source)
                result = self._client.put_object(bucket, key, io.BytesIO(source), size,
                                                 num_parallel_uploads=PARALLEL_PARTS_FILE, **options)
            else:
                counted = _CountingReader(source)
                # Buffered so each part is read in one call instead of being
                # glued together from many small reads.
                stream = io.BufferedReader(counted, buffer_size=CHUNK)
                result = self._client.put_object(bucket, key, stream, -1, num_parallel_uploads=PARALLEL_PARTS_STREAM,
                                                 **options)
                size = counted.count
        except Exception as exc:
            self._raise(exc, bucket, key)
        return ObjectInfo(
            bucket=bucket,
            key=key,
            size=size,
            etag=(result.etag or "").strip('"'),
            content_type=content_type,
            last_modified=result.last_modified,
            version_id=result.version_id or None,
            metadata=dict(metadata),
        )

    def _do_delete(self, bucket: str, key: str) -> None:
        try:
            self._client.remove_object(bucket, key)
        except Exception as exc:
            self._raise(exc, bucket, key)

    def _do_ensure_bucket(self, bucket: str) -> None:
        try:
            if not self._client.bucket_exists(bucket):
                self._client.make_bucket(bucket)
        except S3Error as exc:
            if exc.code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                return  # created by someone else meanwhile; ours is fine
            self._raise(exc, bucket)
        except Exception as exc:
            self._raise(exc, bucket)

    def _do_list_buckets(self) -> list[str]:
        try:
            return [bucket.name for bucket in self._client.list_buckets()]
        except Exception as exc:
            self._raise(exc)

    def check(self) -> None:
        """List buckets: proves the endpoint answers and accepts the credentials."""
        try:
            self._client.list_buckets()
        except S3Error as exc:
            if exc.code == "AccessDenied":
                return  # signed in, just not allowed to list every bucket
            if exc.code in CREDENTIAL_ERRORS:
                raise StorageUnavailable(f"S3 endpoint {self.endpoint} refused the credentials ({exc.code})") from exc
            raise StorageUnavailable(f"S3 endpoint {self.endpoint} answered {exc.code}: {exc.message}") from exc
        except Exception as exc:
            self._raise(exc)

    # --- helpers -------------------------------------------------------------------------

    def _bucket_exists(self, bucket: str) -> bool:
        try:
            return bool(self._client.bucket_exists(bucket))
        except Exception as exc:
            self._raise(exc, bucket)

    def _raise(self, exc: BaseException, bucket: str | None = None, key: str | None = None,
               version_id: str | None = None) -> NoReturn:
        """Re-raise ``exc`` as one of ours (``raise ... from``), without secrets."""
        where = f"{key!r} in bucket {bucket!r}" if key is not None else f"bucket {bucket!r}" if bucket else ""
        if isinstance(exc, S3Error) and version_id is not None and exc.code in VERSION_NOT_FOUND:
            raise ObjectNotFound(f"no version {version_id!r} of {where}") from exc
        if isinstance(exc, S3Error):
            if exc.code == "NoSuchKey":
                raise ObjectNotFound(f"no object {where}") from exc
            if exc.code == "NoSuchBucket":
                raise BucketNotFound(f"bucket {bucket!r} does not exist") from exc
            if exc.code in CREDENTIAL_ERRORS:
                raise StorageError(f"S3 endpoint {self.endpoint} refused the credentials ({exc.code})") from exc
            if exc.code in BUSY_ERRORS or exc.response.status >= 500:
                raise StorageUnavailable(f"S3 endpoint {self.endpoint} is unwell: {exc.code}: {exc.message}") from exc
            raise StorageError(f"S3 refused the request for {where or 'the endpoint'}: {exc.code}: {exc.message}") \
                from exc
        if isinstance(exc, ServerError):
            raise StorageUnavailable(f"S3 endpoint {self.endpoint} failed: HTTP {exc.status_code}") from exc
        if isinstance(exc, InvalidResponseError):
            # An HTML error page from a proxy in front of the store, usually.
            raise StorageUnavailable(f"S3 endpoint {self.endpoint} gave a response that is not S3's") from exc
        if isinstance(exc, Urllib3Error | OSError):
            raise StorageUnavailable(f"cannot reach S3 endpoint {self.endpoint}: {_plain_reason(exc)}") from exc
        if isinstance(exc, _SourceReadError):
            # The caller's stream failed, not the store: let its own error through.
            raise exc.__cause__ or exc
        if isinstance(exc, ValueError):
            # The SDK validates names and metadata before sending anything.
            raise StorageError(f"invalid request for {where or 'S3'}: {exc}") from exc
        raise exc


class _ResponseStream(io.RawIOBase):
    """An object's body as a raw stream; ``close`` returns the connection to the pool."""

    def __init__(self, response: Any, on_error: Callable[..., NoReturn], bucket: str, key: str) -> None:
        self._response = response
        self._on_error = on_error
        self._where = (bucket, key)
        self._at_end = False
        self.headers: Mapping[str, str] = response.headers

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            # decode_content=False: the stored bytes, even for an object saved
            # with Content-Encoding: gzip (its etag and size describe those).
            data = self._response.read(len(buffer), decode_content=False)
        except Exception as exc:
            self._on_error(exc, *self._where)
        buffer[: len(data)] = data
        self._at_end = not data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            if not self._at_end:
                # The rest of the body is still on the wire: this connection cannot
                # be reused, and draining a large object just to reuse it costs more.
                self._response.close()
            self._response.release_conn()
        super().close()


class _SourceReadError(Exception):
    """Marks an error raised by the stream being uploaded (its cause), as opposed to the store."""


class _CountingReader(io.RawIOBase):
    """A stream adapter that counts the bytes read through it."""

    def __init__(self, source: IO[bytes]) -> None:
        self._source = source
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            # At most CHUNK at a time: the buffer above asks for a whole part, and
            # a part-sized temporary copy here would be one more part in memory.
            data = self._source.read(min(len(buffer), CHUNK))
        except Exception as exc:
            raise _SourceReadError() from exc
        if not data:
            return 0
        buffer[: len(data)] = data
        self.count += len(data)
        return len(data)


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _info_from_headers(bucket: str, key: str, headers: Mapping[str, str]) -> ObjectInfo:
    """An ObjectInfo from the headers of a HEAD or GET answer."""
    modified: datetime | None = None
    with contextlib.suppress(TypeError, ValueError):
        modified = parsedate_to_datetime(headers.get("last-modified", ""))
    return ObjectInfo(
        bucket=bucket,
        key=key,
        size=int(headers.get("content-length") or 0),
        etag=(headers.get("etag") or "").strip('"'),
        content_type=headers.get("content-type") or DEFAULT_CONTENT_TYPE,
        last_modified=modified,
        version_id=headers.get("x-amz-version-id") or None,
        metadata={
            name.lower()[len(META_PREFIX):]: value
            for name, value in headers.items()
            if name.lower().startswith(META_PREFIX)
        },
    )


def _plain_reason(exc: BaseException) -> str:
    """'connection refused', 'timed out' ... from a urllib3 or socket error chain."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, MaxRetryError) and seen.reason is not None:
            seen = seen.reason
            continue
        if isinstance(seen, ConnectionRefusedError):
            return "connection refused"
        if isinstance(seen, TimeoutError | socket.timeout) or "timed out" in str(seen).lower():
            return "timed out"
        if isinstance(seen, socket.gaierror):
            return "host name not found"
        if isinstance(seen, ssl.SSLError):
            return f"TLS failed: {seen.reason or seen}"
        if isinstance(seen, ConnectionResetError):
            return "connection reset"
        seen = seen.__cause__ or seen.__context__
    return type(exc).__name__
