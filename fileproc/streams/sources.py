"""What every stream engine gives the poller: records, positions, commits (one module per engine beside this).

A :class:`StreamSource` is one mapping's connection to its engine, used by
one poller (:mod:`fileproc.streams.poller`) from one thread, plus the
read-only and writing calls the CLI and the API make (``status``, ``read``,
``put``, ``reset``) from any process. Engines: :mod:`.redis_streams` (Redis Streams,
also the embedded broker's), :mod:`.redis_lists` (a Redis list as a
reliable queue: MinIO's ``notify_redis``), :mod:`.kafka` (Apache Kafka),
:mod:`.nats` (NATS JetStream), :mod:`.amqp` (a RabbitMQ queue: MinIO's
``notify_amqp``); :func:`fileproc.streams.engines.open_source` picks one by
the mapping's ``source``.

The contract every engine keeps, which the poller's promises rest on:

- ``poll`` returns records of the partitions this consumer holds, in
  order within each partition, never a record twice in one holding unless
  it was not committed (after a restart or a rebalance, what was not
  committed comes again);
- ``commit(partition, position)`` is called only after every record up to
  and including ``position`` of that partition was processed (or given up
  with its failure recorded); a commit is durable in the engine when it
  returns;
- before it gives a partition up (a rebalance), an engine calls the
  poller's ``revoking(partitions)``, which returns once the batches of those
  partitions in flight ended and were committed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple, Protocol

Revoking = Callable[[list[str]], None]


class Record(NamedTuple):
    """One record of a stream, as every engine gives it (a named tuple: a stream makes tens of thousands a
    second, and a frozen dataclass costs three times as much to make)."""

    partition: str  # Kafka's partition number, a Redis stream's shard id, a NATS subject's
    position: str  # Kafka's offset, a Redis entry id, a JetStream stream sequence (as text)
    data: bytes
    key: bytes | None = None  # Kafka's key, the PartitionKey it was put with (None: none)
    timestamp: float = 0.0  # when the stream took it (Unix seconds)
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp_type: str = "CREATE_TIME"  # Kafka's

    @property
    def order_key(self) -> bytes:
        """What per-key order is kept by (the key, else the partition)."""
        return self.key if self.key is not None else self.partition.encode()


@dataclass(frozen=True)
class PartitionStatus:
    """Where a mapping stands on one partition (``fileproc streams status``)."""

    partition: str
    committed: str | None  # the last position committed (None: none yet)
    newest: str | None  # the newest position in the stream
    lag: int | None  # records after the committed position (None: unknown)
    oldest_unprocessed: float | None = None  # when the first record after it arrived (Unix s): IteratorAge


@dataclass(frozen=True)
class Put:
    """A record written by ``fileproc streams put`` or ``POST /streams/NAME/records``: where it went."""

    partition: str
    position: str


class StreamSource(Protocol):
    """One mapping's connection to its stream engine."""

    engine: str  # "kafka", "redis" or "nats"
    event_source_arn: str  # what Lambda's events call the stream (eventSourceARN; Kafka: the topic's "ARN")

    def start(self, revoking: Revoking) -> None:
        """Join the consumer group; a new group starts at the mapping's ``starting_position``."""
        ...

    def poll(self, max_records: int, timeout: float) -> list[Record]:
        """Up to ``max_records`` records not yet given (waits up to ``timeout`` seconds for the first)."""
        ...

    def commit(self, partition: str, position: str) -> None:
        """Every record of ``partition`` up to and including ``position`` is done."""
        ...

    def status(self) -> list[PartitionStatus]:
        """Per partition: committed and newest positions, and the lag."""
        ...

    def read(self, partition: str, first: str, last: str) -> list[Record]:
        """The records of ``partition`` from position ``first`` to ``last`` (both included), still in the stream,
        in order, without consuming them (no group, no commit).

        What a dead letter points at, for a replay: records trimmed or expired since are missing from the
        result (the caller says how many it found); an engine that keeps no records once taken raises
        :class:`~fileproc.errors.StreamError`.
        """
        ...

    def put(self, records: Sequence[tuple[bytes | None, bytes]]) -> list[Put]:
        """Append (key, data) records; returns once the engine holds them durably."""
        ...

    def reset(self, to: str | datetime) -> None:
        """Move the group's committed positions to ``trim_horizon``, ``latest`` or a time (consumers stopped)."""
        ...

    def close(self) -> None:
        """Leave the group (a rebalance gives its partitions to the others) and disconnect."""
        ...


__all__ = ["PartitionStatus", "Put", "Record", "Revoking", "StreamSource"]
