"""Lambda's log format: an invocation's START and END lines, its logging lines, and the log of one cut short.

- ``START RequestId: ID Version: V`` and ``END RequestId: ID`` frame what an
  invocation printed (:func:`start_line`, :func:`end_line`);
- the root logger's lines are ``[LEVEL]\\tTIME\\tREQUEST_ID\\tMESSAGE``
  (:func:`lambda_logging`; the request id is the invocation being captured,
  :func:`set_request_id`);
- an invocation its runner never finished gets the reason and END from the
  worker (:func:`unfinished_log`).
"""

from __future__ import annotations

import logging
import sys
import time

_request_id = ""


def start_line(request_id: str, version: str) -> str:
    """Lambda's first line of an invocation's log."""
    return f"START RequestId: {request_id} Version: {version}\n"


def end_line(request_id: str) -> str:
    """Lambda's last line of an invocation's log."""
    return f"END RequestId: {request_id}\n"


def set_request_id(request_id: str) -> None:
    """The invocation that logging lines written from now on belong to ("" between invocations)."""
    global _request_id
    _request_id = request_id


def unfinished_log(output: str, request_id: str, version: str, *, timeout: float | None = None,
                   error: str = "") -> str:
    """The log of an invocation its runner never finished: what it had written, why it ended, END.

    ``output`` is what the worker read from the runner's output file: the
    module's init output and START, then what was printed (START is added
    if the runner died before writing it). The reason is Lambda's line
    (``2026-12-05T10:00:00.000Z REQUEST_ID Task timed out after 3.00
    seconds``) for a ``timeout``, else ``error`` (fileproc's plain words)
    with the same time and request id.
    """
    if output and not output.endswith("\n"):
        output += "\n"
    if f"START RequestId: {request_id} " not in output:
        output += start_line(request_id, version)
    now = time.time()
    when = f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(now))}.{int(now % 1 * 1000):03d}Z"
    why = f"Task timed out after {timeout:.2f} seconds" if timeout is not None else error
    return f"{output}{when} {request_id} {why}\n{end_line(request_id)}"


class LambdaLogHandler(logging.Handler):
    """Lambda's root handler: ``[LEVEL]\\tTIME\\tREQUEST_ID\\tMESSAGE`` to the invocation's output."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            message = self.format(record).replace("\n", "\r")  # one entry per line, as Lambda keeps it
            sys.stdout.write(f"[{record.levelname}]\t{when}.{int(record.msecs):03d}Z\t{_request_id}\t{message}\n")
        except Exception:
            self.handleError(record)


def lambda_logging() -> None:
    """In a runner: the root logger gets Lambda's handler alone, at Python's default level."""
    root = logging.getLogger()
    for handler in list(root.handlers):  # the worker's: a function's lines go to its own log
        root.removeHandler(handler)
    root.addHandler(LambdaLogHandler())
    root.setLevel(logging.WARNING)  # Python's default, as on Lambda: a handler sets INFO itself


__all__ = ["LambdaLogHandler", "end_line", "lambda_logging", "set_request_id", "start_line", "unfinished_log"]
