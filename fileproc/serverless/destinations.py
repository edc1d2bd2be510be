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
step's end, atomically), which ``fileproc retry --dead-letters`` replays.

``--on-success`` / ``--on-failure`` URLs get the record POSTed at least once:
the delivery is written with the step's end too (an outbox,
:mod:`fileproc.state.deliveries`), so it exists exactly when the end was
committed. The worker tries it right after the commit (in the background);
every fileproc process's relay (:class:`fileproc.runtime.outbox.Relay`) tries again
what is still due (worker died, receiver down, an HTTP error), 1 s after the
first try, doubling up to 5 minutes, for :data:`RETRY_FOR` (24 hours), then
gives it up (logged; ``fileproc functions deliveries`` lists it). A receiver
may get a record twice (a worker that died after posting): ``requestId``
tells duplicates apart, as with Lambda's own at-least-once destinations.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from fileproc.errors import FileprocError
from fileproc.functions import ACCOUNT_ID
from fileproc.service import PeriodicTask
from fileproc.state.deliveries import Claimed, claim
from fileproc.state.deployments import FunctionVersion

if TYPE_CHECKING:
    from fileproc.state import Database

log = logging.getLogger(__name__)

RETRY_FOR = 24 * 3600.0
"""Seconds after the step's end a destination record is still tried; then it is given up."""
FIRST_DELAY, MAX_DELAY = 1.0, 300.0  # seconds between tries: 1, 2, 4 ... 300
POST_TIMEOUT = 5.0
BATCH = 10  # deliveries a relay claims at once: BATCH posts must fit in CLAIM_SECONDS
CLAIM_SECONDS = 120.0  # how long a claimed delivery is held; a claimer that died leaves it due after that


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


def owed(url: str, version: FunctionVersion, record: dict[str, Any]) -> dict[str, Any]:
    """What the step's end records as the delivery of ``record`` to ``url``."""
    context = record["requestContext"]
    return {"url": url, "function": version.function, "version": str(version.version),
            "request_id": context["requestId"], "condition": context["condition"], "record": record}


def post(url: str, record: dict[str, Any]) -> str | None:
    """POST ``record`` to ``url`` once; why it was not taken (None: it was, a 2xx answer)."""
    import httpx

    try:
        answer = httpx.post(url, json=record, timeout=POST_TIMEOUT)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return None if answer.is_success else f"HTTP {answer.status_code}"


def retry_delay(tries: int) -> float:
    """Seconds after try number ``tries`` failed: 1, 2, 4 ... up to 5 minutes."""
    return min(MAX_DELAY, FIRST_DELAY * 2.0 ** (tries - 1))


def deliver_claimed(db: Database, claimed: list[Claimed]) -> int:
    """Try each claimed delivery once and record what came of it; how many were delivered."""
    from fileproc.state.deliveries import record_try

    done = 0
    for delivery in claimed:
        error = post(delivery.url, delivery.record)
        outcome = record_try(db, delivery, error, retry_delay(delivery.attempts + 1), RETRY_FOR)
        request_id = delivery.record.get("requestContext", {}).get("requestId")
        if outcome == "delivered":
            done += 1
        elif outcome == "given up":
            log.warning("destination %s: gave up the record of %s after %d tries over %.0f h; last error: %s",
                        delivery.url, request_id, delivery.attempts + 1, RETRY_FOR / 3600, error)
        else:
            log.info("destination %s did not take the record of %s (try %d, again later): %s", delivery.url,
                     request_id, delivery.attempts + 1, error)
    return done


def deliver_soon(db: Database, request_id: str) -> threading.Thread:
    """Right after the step's end was committed: try its delivery in the background (the relay retries it)."""

    def run() -> None:
        try:
            deliver_claimed(db, claim(db, CLAIM_SECONDS, request_id=request_id))
        except FileprocError as exc:  # the relay tries again once the claim (if any) runs out
            log.warning("delivering the destination record of %s failed (will try again): %s", request_id, exc)

    thread = threading.Thread(target=run, name="fileproc-destination", daemon=True)
    thread.start()
    return thread


def redeliver(db: Database) -> int:
    """Try every delivery that is due, a few at a time (the relay's part); how many were delivered."""
    done = 0
    while claimed := claim(db, CLAIM_SECONDS, limit=BATCH):
        done += deliver_claimed(db, claimed)
        if len(claimed) < BATCH:
            break
    return done


def redrive(service: Any, letters: list[dict[str, Any]]) -> list[tuple[dict[str, Any], Any]]:
    """Run each dead letter's job again, once, and mark the letter replayed; each letter with its job as it is
    now (None: the job is gone). What ``fileproc retry --dead-letters`` and the dashboard's Redrive do."""
    from fileproc import dispatch
    from fileproc.state.deployments import mark_replayed

    done = []
    for letter in letters:
        job = dispatch.retry(service, letter["job"])
        mark_replayed(service.db, letter["id"])
        done.append((letter, job))
    return done


REDELIVERY = PeriodicTask("deliveries", lambda service: redeliver(service.db), "delivered %d destination record(s)")
"""The relay's part: destination records due again (registered with each service by :mod:`fileproc.app`)."""


__all__ = ["REDELIVERY", "deliver_claimed", "deliver_soon", "destination_record", "owed", "post", "redeliver",
           "redrive", "retry_delay"]
