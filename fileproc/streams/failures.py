"""A batch until it is done: retried, split, partly retried, or given up with Lambda's on-failure record.

As Lambda does for stream event source mappings:

- a failed invocation (the handler raised, timed out, ran out of memory)
  is retried, with backoff, until ``max_retries`` retries or until its
  oldest record is older than ``max_record_age`` (-1: until the records
  expire, i.e. forever here);
- ``bisect_on_error`` splits a failing batch in two and tries each half
  (a split is not a retry), so one poison record ends up alone, is retried
  alone and given up alone;
- ``report_batch_item_failures``: the handler returns
  ``{"batchItemFailures": [{"itemIdentifier": ...}]}`` and the batch is
  retried from the first record named (an identifier not in the batch
  fails it whole);
- a batch given up is a dead letter of the function, and a delivery to
  ``on_failure`` if set: its positions, not its data. Then it counts as
  done, and the stream moves on;
- a throttled invocation (reserved concurrency in use) waits and is tried
  again without counting.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from fileproc.functions import ACCOUNT_ID
from fileproc.functions.batches import RecordBatch
from fileproc.functions.kinds import backoff
from fileproc.state.streams import give_up
from fileproc.streams import events
from fileproc.streams.sources import Record

if TYPE_CHECKING:
    from fileproc.mappings import StreamMapping
    from fileproc.runtime.direct import Invocation
    from fileproc.service import Service


class Batches(Protocol):
    """What a batch's retries need of the poller that runs it (:class:`fileproc.streams.poller.Poller`)."""

    region: str
    arn: str
    source: Any

    def event_of(self, records: list[Record]) -> RecordBatch: ...

    def run_batch(self, partition: str, records: list[Record], event: RecordBatch) -> Invocation: ...

    def done(self, partition: str, positions: list[str]) -> None: ...

    def count(self, partition: str, **deltas: int) -> None: ...


class Windowed(Protocol):
    """A lane's tumbling window (:class:`fileproc.streams.poller.Window`)."""

    def event(self, records: list[Record], *, final: bool = False) -> RecordBatch: ...

    def carry(self, result: Any) -> None: ...

log = logging.getLogger(__name__)

MAX_RETRY_DELAY = 10.0  # seconds: a stream's retries are quick (its partition waits for them)


class Failures:
    """Runs one batch to its end for one mapping (see the module's docstring)."""

    def __init__(self, service: Service, mapping: StreamMapping, poller: Batches) -> None:
        self.service, self.mapping, self.poller = service, mapping, poller

    def process(self, partition: str, batch: list[Record], window: Windowed | None,
                stopping: threading.Event, first: Invocation | None = None) -> bool:
        """True once every record of ``batch`` is done (run or given up); False if stopped before.

        ``first``: how the batch's first invocation ended, if the caller ran it already."""
        todo: list[tuple[list[Record], int]] = [(batch, 0)]  # (records, failures so far)
        while todo:
            records, failures = todo.pop(0)
            if first is not None:
                invocation, first = first, None
            else:
                event = window.event(records) if window is not None else self.poller.event_of(records)
                invocation = self.poller.run_batch(partition, records, event)
            if invocation.throttled:
                if stopping.wait(0.2):
                    return False
                todo.insert(0, (records, failures))
                continue
            failed_from = self.failed_from(records, invocation)
            if failed_from is None:  # all done
                if window is not None:
                    window.carry(invocation.result)
                continue
            if failed_from > 0:  # the records before the first failed item are done
                self.poller.done(partition, [r.position for r in records[:failed_from]])
                records = records[failed_from:]
            if self.mapping.bisect_on_error and len(records) > 1 and failed_from == 0 \
                    and self._give_up_why(records, 0) is None:  # a split is not a retry: the halves try again
                half = len(records) // 2
                todo[:0] = [(records[:half], failures), (records[half:], failures)]
                continue
            failures += 1
            condition = self._give_up_why(records, failures)
            if condition is not None:
                self._give_up(partition, records, invocation, condition, failures)
                continue
            delay = min(MAX_RETRY_DELAY, backoff(failures, first=0.1))
            log.warning("stream %s: batch %s-%s of %s failed (%d); retrying in %.1f s: %s", self.mapping.name,
                        records[0].position, records[-1].position, partition, failures, delay,
                        invocation.error or "the handler reported batch item failures")
            if stopping.wait(delay):
                return False
            todo.insert(0, (records, failures))
        return True

    def failed_from(self, records: list[Record], invocation: Invocation) -> int | None:
        """Index of the first record to run again (None: the batch succeeded)."""
        if not invocation.ok:
            return 0
        if not self.mapping.report_batch_item_failures or not records:
            return None
        result = invocation.result
        failures = result.get("batchItemFailures") if isinstance(result, dict) else None
        if not failures:
            return None
        index = {record.position: i for i, record in enumerate(records)}
        named = []
        for item in failures:
            identifier = item.get("itemIdentifier") if isinstance(item, dict) else None
            if identifier is None or str(identifier) not in index:
                return 0  # Lambda: an identifier it cannot find fails the whole batch
            named.append(index[str(identifier)])
        return min(named)

    def _give_up_why(self, records: list[Record], failures: int) -> str | None:
        """Lambda's condition for giving ``records`` up now (None: retry them)."""
        if self.mapping.max_retries >= 0 and failures > self.mapping.max_retries:
            return "RetryAttemptsExhausted"
        if self.mapping.max_record_age >= 0 and records and \
                time.time() - records[0].timestamp > self.mapping.max_record_age:
            return "RecordAgeExceeded"
        return None

    def _give_up(self, partition: str, records: list[Record], invocation: Invocation, condition: str,
                 failures: int) -> None:
        error = invocation.error or {}
        message = f"{error.get('errorType')}: {error.get('errorMessage')}"
        log.warning("stream %s: gave up records %s-%s of %s (%s) after %d tries: %s", self.mapping.name,
                    records[0].position, records[-1].position, partition, condition, failures, message)
        record = self.on_failure_record(partition, records, invocation, condition, failures)
        give_up(self.service.db, job_id=invocation.job_id or 0, function=self.mapping.function.partition(":")[0],
                version=invocation.version, request_id=invocation.request_id, condition=condition, error=message,
                record=record, url=self.mapping.on_failure)
        self.poller.count(partition, failed=len(records))

    def on_failure_record(self, partition: str, records: list[Record], invocation: Invocation, condition: str,
                          failures: int) -> dict[str, Any]:
        """Lambda's on-failure record of a stream batch: where its records are, not what they hold."""
        region = self.poller.region
        function = self.mapping.function.partition(":")[0]
        if self.mapping.engine == "kafka":
            info_name, info = "KafkaBatchInfo", {
                "bootstrapServers": getattr(self.poller.source, "bootstrap_servers", ""),
                "topic": getattr(self.poller.source, "topic", ""), "partition": int(partition),
                "startOffset": int(records[0].position), "endOffset": int(records[-1].position),
                "batchSize": len(records)}
        else:
            info_name, info = "KinesisBatchInfo", {
                "shardId": events.shard_id(partition), "startSequenceNumber": records[0].position,
                "endSequenceNumber": records[-1].position,
                "approximateArrivalOfFirstRecord": _iso(records[0].timestamp),
                "approximateArrivalOfLastRecord": _iso(records[-1].timestamp),
                "batchSize": len(records), "streamArn": self.poller.arn}
        error = invocation.error or {}
        return {
            "requestContext": {"requestId": invocation.request_id, "condition": condition,
                               "functionArn": f"arn:aws:lambda:{region}:{ACCOUNT_ID}:function:{function}",
                               "approximateInvokeCount": failures},
            "responseContext": {"statusCode": 200, "executedVersion": invocation.version or "$LATEST",
                                "functionError": "Unhandled"},
            "version": "1.0", "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
            info_name: info,
            "fileproc": {"stream": self.mapping.name, "partition": partition,
                         "error": f"{error.get('errorType')}: {error.get('errorMessage')}"},
        }


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")


__all__ = ["Failures"]
