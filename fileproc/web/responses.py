"""How the API answers: JSON bodies, and every error as a status code with ``{"error": "<reason>"}``.

Our own errors map to a status by kind (:func:`fileproc_error`): a busy or
unreachable database or store is ours to fix, so 503 with ``Retry-After`` (a
retrying store comes back); a notification with too many records is 413;
any other :class:`~fileproc.errors.FileprocError` is the caller's (400).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from fileproc.errors import FileprocError, StorageError
from fileproc.intake.notifications import TooManyRecords
from fileproc.intake.webhook import Busy, Counters
from fileproc.state import DatabaseUnavailable

log = logging.getLogger(__name__)

RETRY_AFTER = "1"
"""Seconds a sender is asked to wait before retrying a 503."""


def json_response(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    """``data`` as compact JSON."""
    # A plain Response: no response model to validate on the hot path.
    return Response(json.dumps(data, separators=(",", ":")), status_code=status, headers=headers,
                    media_type="application/json")


def fileproc_error(exc: FileprocError, counters: Counters) -> Response:
    """The answer to one of our errors (503, 413 or 400), counted in the receiver's ``counters``."""
    if isinstance(exc, DatabaseUnavailable | Busy | StorageError):
        # Ours to fix, not the sender's: ask it to come back (a retrying store retries).
        counters.add(busy=1)
        return json_response({"error": str(exc)}, 503, {"Retry-After": RETRY_AFTER})
    if isinstance(exc, TooManyRecords):
        counters.add(too_large=1)
        return json_response({"error": str(exc)}, 413)
    return json_response({"error": str(exc)}, 400)


def http_error(exc: HTTPException) -> Response:
    """An HTTPException's status, headers and ``{"error": detail}``."""
    return json_response({"error": exc.detail}, exc.status_code, exc.headers)


def error_response(exc: Exception, counters: Counters, what: str) -> Response:
    """Any exception's answer, as the framework's handlers give it; 500 (logged) for an unexpected one."""
    if isinstance(exc, FileprocError):
        return fileproc_error(exc, counters)
    if isinstance(exc, HTTPException):
        return http_error(exc)
    log.exception("%s failed", what)
    return json_response({"error": "internal error"}, 500)


def add_error_handlers(app: FastAPI) -> None:
    """Every error of ``app`` answers the same way: a status code and ``{"error": "<reason>"}``."""

    def on_fileproc_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, FileprocError)
        return fileproc_error(exc, request.app.state.counters)

    def on_http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return http_error(exc)

    app.add_exception_handler(FileprocError, on_fileproc_error)
    app.add_exception_handler(HTTPException, on_http_error)


__all__ = ["RETRY_AFTER", "add_error_handlers", "error_response", "fileproc_error", "http_error", "json_response"]
