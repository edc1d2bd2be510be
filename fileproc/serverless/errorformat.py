"""Lambda's errors: a handler that never loaded (:class:`InitError`), and the error object of an exception."""

from __future__ import annotations

import traceback
from typing import Any

from fileproc.errors import PermanentError


class InitError(PermanentError):
    """The function's module did not import, or has no such handler: no retry will help."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def error_object(exc: BaseException, request_id: str) -> dict[str, Any]:
    """Lambda's record of a handler's exception (``errorMessage``, ``errorType``, ``requestId``, ``stackTrace``)."""
    kind = exc.kind if isinstance(exc, InitError) else type(exc).__name__
    frames = traceback.extract_tb(exc.__traceback__)
    return {"errorMessage": str(exc) or kind, "errorType": kind, "requestId": request_id,
            "stackTrace": [line for line in traceback.format_list(frames)]}


__all__ = ["InitError", "error_object"]
