"""fileproc's exceptions.

The tree::

    FileprocError
    ├── ConfigError            a setting or pipeline is invalid (names the field)
    ├── StorageError           the object store said no
    │   ├── ObjectNotFound
    │   ├── BucketNotFound
    │   └── StorageUnavailable transient: the store cannot be reached (retried)
    ├── BrokerUnavailable      transient: the Celery broker cannot be reached
    ├── FunctionNotFound       a pipeline names a function nobody registered
    └── StepError              raised by (or on behalf of) a function
        ├── InvalidInput       permanent: the input itself is bad (corrupt, wrong type)
        ├── PermanentError     permanent: fail the job at once, do not retry
        └── TransientError     retry with backoff

A step that runs past its time limit or whose process dies raises nothing:
the worker sees it from outside (``runtime.sandbox``) and records it.

Foreign exceptions (minio, SQLAlchemy, kombu, Pillow) are translated at the
boundary with ``raise ... from``, so callers only ever catch these.
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


class StorageUnavailable(StorageError):
    """The object store cannot be reached right now; worth retrying."""


class BrokerUnavailable(FileprocError):
    """The Celery broker cannot be reached right now; worth retrying."""


class FunctionNotFound(FileprocError):
    """No function is registered under the requested name."""


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
