"""fileproc: self-hosted, real-time file processing on your own buckets.

The public surface a function author needs::

    from fileproc import function, Context, InvalidInput
"""

from fileproc.errors import FileprocError, InvalidInput, PermanentError, TransientError
from fileproc.functions import Context, InputObject, OutputRef, OutputWriter, function

__version__ = "0.1.0"

__all__ = [
    "Context",
    "FileprocError",
    "InputObject",
    "InvalidInput",
    "OutputRef",
    "OutputWriter",
    "PermanentError",
    "TransientError",
    "__version__",
    "function",
]
