"""Where a deployed function's outcome goes: Lambda's destination record, dead letters, webhooks.

After a deployed function's step ends for good, fileproc builds Lambda's
destination record::

    {"version": "1.0", "timestamp": "...Z",
     "requestContext": {"requestId", "functionArn": "...:function:NAME:VERSION",
                        "condition": "Success" | "RetriesExhausted" | "EventAgeExceeded",
                        "approximateInvokeCount": N},
     "requestPayload": {"Records": [...]},                   # the event the handler got
     "responseContext": {"statusCode": 200, "executedVersion": "3", "functionError": "Unhandled"},
     "responsePayload": ...}                                  # its return value or error object

A failure is kept as a dead-letter record in the state database (with the
step's end, atomically), which ``fileproc retry --dead-letters`` replays;
``--on-success`` / ``--on-failure`` URLs get the record POSTed (best effort:
three tries from the worker, in the background, logged if all fail).
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any

from fileproc.functions import ACCOUNT_ID
from fileproc.state.deployments import FunctionVersion

log = logging.getLogger(__name__)

TRIES = 3


def destination_record(version: FunctionVersion, *, region: str, request_id: str, condition: str,
                       event: dict[str, Any], result: Any, invoke_count: int) -> dict[str, Any]:
    """Lambda's destination record of one invocation."""
    response: dict[str, Any] = {"statusCode": 200, "executedVersion": str(version.version)}
    if condition != "Success":
        response["functionError"] = "Unhandled"
    return {
        "version": "1.0",
        "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
        "requestContext": {
            "requestId": request_id,
            "functionArn": f"arn:aws:lambda:{region}:{ACCOUNT_ID}:function:{version.function}:{version.version}",
            "condition": condition, "approximateInvokeCount": invoke_count,
        },
        "requestPayload": event,
        "responseContext": response,
        "responsePayload": result,
    }


def deliver(url: str, record: dict[str, Any]) -> threading.Thread:
    """POST ``record`` to ``url`` in the background (three tries); the thread doing it."""

    def post() -> None:
        import httpx

        for attempt in range(1, TRIES + 1):
            try:
                answer = httpx.post(url, json=record, timeout=5.0)
                if answer.status_code < 400:
                    return
                problem = f"HTTP {answer.status_code}"
            except httpx.HTTPError as exc:
                problem = str(exc) or type(exc).__name__
            if attempt < TRIES:
                time.sleep(0.5 * attempt)
        log.warning("destination %s did not take the record of %s: %s", url,
                    record["requestContext"]["requestId"], problem)

    thread = threading.Thread(target=post, name="fileproc-destination", daemon=True)
    thread.start()
    return thread


__all__ = ["deliver", "destination_record"]
