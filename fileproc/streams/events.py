"""A batch's event, as Lambda gives it: a :class:`~fileproc.functions.batches.RecordBatch` of the records.

Kafka sources give the self-managed Kafka event, every other source (Redis
Streams, NATS, records put over HTTP) Kinesis' event; the event itself is
built where the handler runs (:meth:`RecordBatch.event`). A tumbling window
adds Lambda's ``window``, ``state``, ``shardId``, ``isFinalInvokeForWindow``
and ``isWindowTerminatedEarly`` (:func:`with_window`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from fileproc.functions.batches import ACCOUNT_ID, RecordBatch, shard_id
from fileproc.streams.sources import Record


def stream_arn(region: str, stream: str) -> str:
    """A Kinesis stream's ARN, for a stream that is not one (Redis, NATS): what ``eventSourceARN`` says."""
    return f"arn:aws:kinesis:{region}:{ACCOUNT_ID}:stream/{stream}"


def batch_of(records: Sequence[Record], *, kafka: bool, region: str, arn: str, topic: str = "",
             bootstrap_servers: str = "") -> RecordBatch:
    """The batch of ``records`` (one partition's), to be the event of Kafka's or Kinesis' shape."""
    # A Record's fields are a BatchRecord's, in its order: each becomes the plain tuple of them (in C: a busy
    # stream makes a thousand batches a second).
    return RecordBatch("kafka" if kafka else "kinesis", tuple(map(tuple, records)),  # type: ignore[arg-type]
                       region=region, arn=arn, topic=topic, bootstrap_servers=bootstrap_servers)


def with_window(batch: RecordBatch, *, start: float, end: float, state: dict[str, Any], partition: str,
                final: bool) -> RecordBatch:
    """``batch`` with Lambda's tumbling window fields."""
    return replace(batch, extra={
        "window": {"start": _iso(start), "end": _iso(end)}, "state": state, "shardId": shard_id(partition),
        "eventSourceARN": batch.arn, "isFinalInvokeForWindow": final, "isWindowTerminatedEarly": False})


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


__all__ = ["batch_of", "shard_id", "stream_arn", "with_window"]
