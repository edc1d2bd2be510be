"""A batch of stream records as it travels to a runner, and the Lambda event it becomes there.

A stream's batch is sent to the function's runner as the records themselves
(:class:`RecordBatch`: bytes and numbers, quick to pickle), and the runner
builds the event the handler gets (:meth:`RecordBatch.event`), exactly as
Lambda's Python runtime gets it:

- ``kafka``: the self-managed Kafka event (``eventSource: SelfManagedKafka``,
  ``records`` keyed ``TOPIC-PARTITION``, base64 ``key`` and ``value``,
  ``headers`` as lists of byte values, ``timestamp`` in milliseconds);
- ``kinesis``: Kinesis' event (``Records[].kinesis`` with base64 ``data``),
  for Redis Streams, NATS and records put over HTTP.

``extra`` is merged into the event's top level (a tumbling window's
``window``, ``state``, ``isFinalInvokeForWindow`` ...). Kept lean: a
deployed function's runner imports it on its cold start.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass, field
from typing import Any

ACCOUNT_ID = "000000000000"
"""The account fileproc names in ARNs (a self-hosted service has no AWS account)."""

BatchRecord = tuple[str, str, bytes, "bytes | None", float, tuple[tuple[str, bytes], ...], str]
"""(partition, position, data, key, timestamp in Unix seconds, headers, Kafka's timestamp type)."""


def shard_id(partition: str) -> str:
    """Kinesis' name of a partition: ``shardId-000000000000`` for a number, the name itself otherwise."""
    return f"shardId-{int(partition):012d}" if partition.isdigit() else partition


@dataclass(frozen=True)
class RecordBatch:
    """One partition's batch of records, and what its event says about where they came from."""

    shape: str  # "kinesis" or "kafka"
    records: tuple[BatchRecord, ...]
    region: str = "us-east-1"
    arn: str = ""  # Kinesis' eventSourceARN
    topic: str = ""  # Kafka's
    bootstrap_servers: str = ""  # Kafka's
    extra: dict[str, Any] = field(default_factory=dict)

    def event(self) -> dict[str, Any]:
        """The event Lambda gives a handler for these records."""
        built = self._kafka() if self.shape == "kafka" else self._kinesis()
        return {**built, **self.extra} if self.extra else built

    def _kinesis(self) -> dict[str, Any]:
        region, arn = self.region, self.arn
        role = f"arn:aws:iam::{ACCOUNT_ID}:role/fileproc"
        shards: dict[str, str] = {}  # (one partition's batch: its shard id is made once)
        return {"Records": [{
            "kinesis": {
                "kinesisSchemaVersion": "1.0",
                "partitionKey": key.decode("utf-8", "replace") if key is not None else partition,
                "sequenceNumber": position,
                "data": _b64(data),
                "approximateArrivalTimestamp": round(timestamp, 3),
            },
            "eventSource": "aws:kinesis",
            "eventVersion": "1.0",
            "eventID": f"{shards.get(partition) or shards.setdefault(partition, shard_id(partition))}:{position}",
            "eventName": "aws:kinesis:record",
            "invokeIdentityArn": role,
            "awsRegion": region,
            "eventSourceARN": arn,
        } for partition, position, data, key, timestamp, _, _ in self.records]}

    def _kafka(self) -> dict[str, Any]:
        grouped: dict[str, list[dict[str, Any]]] = {}
        for partition, position, data, key, timestamp, headers, timestamp_type in self.records:
            record: dict[str, Any] = {
                "topic": self.topic, "partition": int(partition), "offset": int(position),
                "timestamp": round(timestamp * 1000), "timestampType": timestamp_type}
            if key is not None:
                record["key"] = _b64(key)
            record["value"] = _b64(data)
            record["headers"] = [{name: list(value)} for name, value in headers]
            grouped.setdefault(f"{self.topic}-{partition}", []).append(record)
        return {"eventSource": "SelfManagedKafka", "bootstrapServers": self.bootstrap_servers, "records": grouped}


def _b64(data: bytes) -> str:
    """Standard base64 as text (``base64.b64encode``'s, without its Python wrapper: a call per record)."""
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def lambda_event(payload: dict[str, Any] | RecordBatch) -> dict[str, Any]:
    """The event of an invocation's payload: a batch's, built now; any other event as it is."""
    return payload.event() if isinstance(payload, RecordBatch) else payload


__all__ = ["ACCOUNT_ID", "BatchRecord", "RecordBatch", "lambda_event", "shard_id"]
