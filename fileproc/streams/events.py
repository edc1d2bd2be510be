"""The events a handler gets for a batch of records, exactly as Lambda's Python runtime gets them.

- Kafka: Lambda's self-managed Kafka event (``eventSource: SelfManagedKafka``,
  ``records`` keyed ``TOPIC-PARTITION``, base64 ``key`` and ``value``,
  ``headers`` as lists of byte values, ``timestamp`` in milliseconds);
- Redis Streams, NATS and records put over HTTP: Kinesis's event
  (``Records[].kinesis`` with base64 ``data``), so a handler written for
  Lambda + Kinesis runs unchanged.

A tumbling window adds Lambda's ``window``, ``state``, ``shardId``,
``isFinalInvokeForWindow`` and ``isWindowTerminatedEarly`` to the event.
:func:`item_identifier` is what a handler names a record by in its
``batchItemFailures`` (Kinesis' ``sequenceNumber``, Kafka's offset).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

from fileproc.functions import ACCOUNT_ID
from fileproc.streams.sources import Record


def shard_id(partition: str) -> str:
    """Kinesis' name of a partition: ``shardId-000000000000`` for a number, the name itself otherwise."""
    return f"shardId-{int(partition):012d}" if partition.isdigit() else partition


def stream_arn(region: str, stream: str) -> str:
    """A Kinesis stream's ARN, for a stream that is not one (Redis, NATS): what ``eventSourceARN`` says."""
    return f"arn:aws:kinesis:{region}:{ACCOUNT_ID}:stream/{stream}"


def kinesis_event(records: Sequence[Record], *, region: str, arn: str) -> dict[str, Any]:
    """Kinesis' event of ``records`` (one partition's)."""
    return {"Records": [{
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": _text(record.key) if record.key is not None else record.partition,
            "sequenceNumber": record.position,
            "data": base64.b64encode(record.data).decode("ascii"),
            "approximateArrivalTimestamp": round(record.timestamp, 3),
        },
        "eventSource": "aws:kinesis",
        "eventVersion": "1.0",
        "eventID": f"{shard_id(record.partition)}:{record.position}",
        "eventName": "aws:kinesis:record",
        "invokeIdentityArn": f"arn:aws:iam::{ACCOUNT_ID}:role/fileproc",
        "awsRegion": region,
        "eventSourceARN": arn,
    } for record in records]}


def kafka_event(records: Sequence[Record], *, topic: str, bootstrap_servers: str) -> dict[str, Any]:
    """Lambda's self-managed Kafka event of ``records`` (one partition's)."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        grouped.setdefault(f"{topic}-{record.partition}", []).append({
            "topic": topic,
            "partition": int(record.partition),
            "offset": int(record.position),
            "timestamp": round(record.timestamp * 1000),
            "timestampType": record.timestamp_type,
            **({"key": base64.b64encode(record.key).decode("ascii")} if record.key is not None else {}),
            "value": base64.b64encode(record.data).decode("ascii"),
            "headers": [{name: list(value)} for name, value in record.headers],
        })
    return {"eventSource": "SelfManagedKafka", "bootstrapServers": bootstrap_servers, "records": grouped}


def with_window(event: dict[str, Any], *, start: float, end: float, state: dict[str, Any], partition: str,
                arn: str, final: bool) -> dict[str, Any]:
    """``event`` with Lambda's tumbling window fields."""
    return {**event, "window": {"start": _iso(start), "end": _iso(end)}, "state": state,
            "shardId": shard_id(partition), "eventSourceARN": arn, "isFinalInvokeForWindow": final,
            "isWindowTerminatedEarly": False}


def item_identifier(engine: str, record: Record) -> str:
    """What a handler's ``batchItemFailures`` name ``record`` by."""
    return record.position


def _text(key: bytes) -> str:
    return key.decode("utf-8", "replace")


def _iso(seconds: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


__all__ = ["item_identifier", "kafka_event", "kinesis_event", "shard_id", "stream_arn", "with_window"]
