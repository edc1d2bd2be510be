"""fileproc: self-hosted, real-time file processing on your own buckets.

The public surface a function author needs::

    from fileproc import function, Context, InvalidInput

The exceptions a function raises (InvalidInput, PermanentError, TransientError)
or catches (ObjectNotFound: what ``context.storage`` raises for an object that
is gone) are here too; the whole tree is drawn in :mod:`fileproc.errors`.
"""

from fileproc.errors import FileprocError, InvalidInput, ObjectNotFound, PermanentError, TransientError
from fileproc.functions import Context, InputObject, OutputRef, OutputWriter, function

__version__ = "0.1.0"

__all__ = [
    "Context",
    "FileprocError",
    "InputObject",
    "InvalidInput",
    "ObjectNotFound",
    "OutputRef",
    "OutputWriter",
    "PermanentError",
    "TransientError",
    "__version__",
    "function",
]
