"""fileproc's exceptions.

The tree (every subclass of FileprocError, wherever it is defined: those
defined elsewhere name the module to import them from)::

    FileprocError
    ├── ConfigError            a setting or pipeline is invalid (names the field)
    ├── StorageError           the object store said no
    │   ├── ObjectNotFound     the object does not exist (also ``from fileproc import ObjectNotFound``)
    │   ├── BucketNotFound
    │   ├── InvalidName        permanent: a bucket name or key no store may hold
    │   ├── InvalidMetadata    permanent: metadata or content type every store cannot carry
    │   └── StorageUnavailable transient: the store cannot be reached (retried)
    ├── BrokerUnavailable      transient: the Celery broker cannot be reached
    ├── DatabaseUnavailable    the state database cannot be reached or written (fileproc.state)
    ├── FunctionNotFound       a pipeline names a function nobody registered
    ├── StreamError            a stream's engine (Kafka, Redis, NATS) refused or cannot be reached
    ├── BadJSON                a body from outside is not JSON, or nests too deep: 400 (fileproc.jsonbody)
    ├── BadNotification        not a bucket notification we understand: 400 (fileproc.intake.notifications)
    │   ├── BadKey             a record names an object no store may hold (fileproc.intake.notifications)
    │   └── TooManyRecords     more records than the receiver takes at once: 413 (fileproc.intake.notifications)
    ├── Busy                   events not recorded in time, the sender should retry: 503 (fileproc.intake.webhook)
    ├── IndexCorrupt           the search index on disk cannot be read (fileproc.search)
    └── StepError              raised by (or on behalf of) a function
        ├── InvalidInput       permanent: the input itself is bad (corrupt, wrong type)
        ├── PermanentError     permanent: fail the job at once, do not retry
        │   └── InitError      a deployed function's module did not import (fileproc.serverless.errorformat)
        └── TransientError     retry with backoff

A step that runs past its time limit or whose process dies raises nothing:
the worker sees it from outside (its ``ChildResult``) and records it.

Foreign exceptions (minio, SQLAlchemy, kombu, Pillow) are translated at the
boundary with ``raise ... from``, so callers only ever catch these.
tests/test_public_surface.py checks that this tree names every subclass.
"""

from __future__ import annotations


class FileprocError(Exception):
    """Base of every error fileproc raises on purpose."""


class ConfigError(FileprocError):
    """A setting or pipeline in the configuration is invalid."""


class StorageError(FileprocError):
    """The object store refused or failed an operation."""


class ObjectNotFound(StorageError):
    """The object does not exist (or no longer exists)."""


class BucketNotFound(StorageError):
    """The bucket does not exist."""


class InvalidName(StorageError):
    """A bucket name, key or prefix that no backend may store. Permanent."""


class InvalidMetadata(StorageError):
    """Metadata (or a content type) that cannot be stored on every backend. Permanent."""


class StorageUnavailable(StorageError):
    """The object store cannot be reached right now; worth retrying."""


class BrokerUnavailable(FileprocError):
    """The Celery broker cannot be reached right now; worth retrying."""


class FunctionNotFound(FileprocError):
    """No function is registered under the requested name."""


class StreamError(FileprocError):
    """A stream's engine (Kafka, Redis Streams, NATS JetStream) refused an operation or cannot be reached."""


class StepError(FileprocError):
    """A step of a pipeline failed."""


class InvalidInput(StepError):
    """The input object is not something this function can process.

    Permanent: the job fails at once with this message as its reason.
    """


class PermanentError(StepError):
    """A failure that retrying cannot fix. The job fails at once."""


class TransientError(StepError):
    """A failure that may pass (a flaky dependency). The step is retried."""


TRANSIENT: tuple[type[Exception], ...] = (StorageUnavailable, BrokerUnavailable, TransientError)
"""Errors after which a step is retried with backoff rather than failed."""


def network_reason(exc: BaseException) -> str | None:
    """A network failure anywhere in ``exc``'s chain, in plain words; None if it is not one.

    Libraries say the same thing many ways (``ETIMEDOUT``, ``timeout expired``,
    ``ConnectTimeoutError``...); a person wants "timed out" or "network
    unreachable"::

        >>> network_reason(OSError(101, "Network is unreachable"))
        'network unreachable'
    """
    import errno
    import socket

    by_errno = {
        errno.ENETUNREACH: "network unreachable", errno.EHOSTUNREACH: "host unreachable",
        errno.ECONNREFUSED: "connection refused (nothing listens there)", errno.ETIMEDOUT: "timed out",
        errno.ECONNRESET: "connection reset",
    }
    by_text = (
        ("network is unreachable", "network unreachable"), ("no route to host", "host unreachable"),
        ("timed out", "timed out"), ("timeout", "timed out"), ("connection refused", "connection refused "
         "(nothing listens there)"), ("name or service not known", "host name not found"),
        ("temporary failure in name resolution", "host name not found"), ("connection reset", "connection reset"),
    )
    seen: BaseException | None = exc
    for _ in range(10):  # a chain, not a loop
        if seen is None:
            return None
        if isinstance(seen, socket.gaierror):
            return "host name not found"
        if isinstance(seen, TimeoutError | socket.timeout):
            return "timed out"
        if isinstance(seen, OSError) and seen.errno in by_errno:
            return by_errno[seen.errno]
        text = f"{type(seen).__name__} {seen}".lower()
        for needle, reason in by_text:
            if needle in text:
                return reason
        seen = seen.__cause__ or seen.__context__
    return None


PERMANENT: tuple[type[Exception], ...] = (
    InvalidInput, PermanentError, FunctionNotFound, ConfigError, InvalidName, InvalidMetadata,
)


def kind_of(exc: BaseException) -> str:
    """How a failure is handled: ``permanent``, ``memory`` (both fail at once), ``transient`` or ``error``."""
    if isinstance(exc, MemoryError):
        return "memory"
    if isinstance(exc, PERMANENT):
        return "permanent"
    if isinstance(exc, TRANSIENT):
        return "transient"
    return "error"
