"""What the stream pollers record: each mapping's partitions as they stand, and batches given up.

A poller keeps its counts in memory and writes them here about once a
second (:func:`save_partitions`), never per batch, and its lag every half
minute (:func:`save_lag`, kept an hour): ``fileproc streams
status``, ``/metrics`` and the dashboard read them (:func:`partitions`)
beside the engine's own positions. A batch given up after its retries is a
dead letter of its function (Lambda's on-failure record for streams: the
batch's positions, not its data) and, when the mapping has an ``on_failure``
URL, a delivery owed to it, posted by the relay (:mod:`.deliveries`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Float, Index, Integer, String, Text, delete, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, mapped_column

from fileproc.state.models import Base, DeadLetterRow, DeliveryRow, utcnow
from fileproc.state.records import aware

if TYPE_CHECKING:
    from fileproc.state import Database


class StreamPartitionRow(Base):
    """A mapping's partition as its poller last saw it (counts since the mapping was first consumed)."""

    __tablename__ = "stream_partitions"

    mapping: Mapped[str] = mapped_column(String(64), primary_key=True)
    partition: Mapped[str] = mapped_column(String(255), primary_key=True)
    worker: Mapped[str] = mapped_column(String(255), default="")
    batches: Mapped[int] = mapped_column(Integer, default=0)
    records: Mapped[int] = mapped_column(Integer, default=0)
    filtered: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)  # records given up (dead letters)
    errors: Mapped[int] = mapped_column(Integer, default=0)  # failed invocations (each retried or given up)
    in_flight: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    last_error_at: Mapped[datetime | None] = mapped_column(default=None)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class StreamLagRow(Base):
    """A mapping's lag on one partition at one moment (kept an hour: the dashboard's chart)."""

    __tablename__ = "stream_lag"
    __table_args__ = (Index("ix_stream_lag_mapping_at", "mapping", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    mapping: Mapped[str] = mapped_column(String(64))
    partition: Mapped[str] = mapped_column(String(255))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    lag_records: Mapped[int] = mapped_column(Integer, default=0)
    lag_seconds: Mapped[float] = mapped_column(Float, default=0.0)


LAG_KEPT = timedelta(hours=1)


def save_lag(db: Database, mapping: str, samples: list[tuple[str, int, float]]) -> None:
    """(partition, lag in records, lag in seconds) of each partition now; samples older than an hour go."""
    with db.session() as s:
        now = db.now(s)
        if samples:
            s.execute(insert(StreamLagRow), [{"mapping": mapping, "partition": p, "at": now, "lag_records": records,
                                              "lag_seconds": seconds} for p, records, seconds in samples])
        s.execute(delete(StreamLagRow).where(StreamLagRow.mapping == mapping, StreamLagRow.at < now - LAG_KEPT))


def lag_history(db: Database, mapping: str) -> list[tuple[datetime, str, int, float]]:
    """The last hour's (time, partition, lag in records, lag in seconds) of ``mapping``, oldest first."""
    with db.reading() as r:
        since = db.now(r) - LAG_KEPT
        rows = r.execute(select(StreamLagRow.at, StreamLagRow.partition, StreamLagRow.lag_records,
                                StreamLagRow.lag_seconds)
                         .where(StreamLagRow.mapping == mapping, StreamLagRow.at >= since)
                         .order_by(StreamLagRow.at))
        return [(aware(at) or at, partition, records, seconds) for at, partition, records, seconds in rows]


@dataclass
class PartitionCounts:
    """What a poller adds to one partition's row at its next save."""

    batches: int = 0
    records: int = 0
    filtered: int = 0
    failed: int = 0
    errors: int = 0
    in_flight: int = 0  # (a level, not a count: replaces the row's)
    last_error: str | None = None
    last_error_at: datetime | None = None


_COUNTED = ("batches", "records", "filtered", "failed", "errors")


def save_partitions(db: Database, mapping: str, worker: str, counts: dict[str, PartitionCounts]) -> None:
    """Add ``counts`` to each partition's row (made on first use), in one transaction."""
    if not counts:
        return
    table = StreamPartitionRow.__table__
    dialect = sqlite if db.is_sqlite else postgresql
    with db.session() as s:
        now = db.now(s)
        for partition, c in counts.items():
            values: dict[str, Any] = {"mapping": mapping, "partition": partition, "worker": worker,
                                      "in_flight": c.in_flight, "updated_at": now,
                                      **{name: getattr(c, name) for name in _COUNTED}}
            changes: dict[str, Any] = {"worker": worker, "in_flight": c.in_flight, "updated_at": now,
                                       **{name: table.c[name] + getattr(c, name) for name in _COUNTED}}
            if c.last_error is not None:
                values |= {"last_error": c.last_error[:2000], "last_error_at": c.last_error_at or now}
                changes |= {"last_error": c.last_error[:2000], "last_error_at": c.last_error_at or now}
            s.execute(dialect.insert(table).values(**values)
                      .on_conflict_do_update(index_elements=["mapping", "partition"], set_=changes))


def partitions(db: Database, mapping: str | None = None) -> list[dict[str, Any]]:
    """Every partition's row (of ``mapping``, if given), as plain dicts."""
    query = select(StreamPartitionRow).order_by(StreamPartitionRow.mapping, StreamPartitionRow.partition)
    if mapping is not None:
        query = query.where(StreamPartitionRow.mapping == mapping)
    with db.reading() as r:
        return [{"mapping": row.mapping, "partition": row.partition, "worker": row.worker, "batches": row.batches,
                 "records": row.records, "filtered": row.filtered, "failed": row.failed, "errors": row.errors,
                 "in_flight": row.in_flight, "last_error": row.last_error,
                 "last_error_at": _iso(row.last_error_at), "updated_at": _iso(row.updated_at)}
                for row in r.scalars(query)]


def give_up(db: Database, *, job_id: int, function: str, version: str | None, request_id: str, condition: str,
            error: str | None, record: dict[str, Any], url: str | None) -> None:
    """A batch given up: its dead letter, and its delivery to ``url`` if any, in one transaction."""
    with db.session() as s:
        now = db.now(s)
        s.execute(insert(DeadLetterRow).values(
            job_id=job_id, function=function, version=version, request_id=request_id, condition=condition,
            error=error, record=record, created_at=now))
        if url:
            s.execute(insert(DeliveryRow).values(
                job_id=job_id, function=function, version=version, request_id=request_id, condition=condition,
                url=url, record=record, attempts=0, next_at=now, created_at=now))


def dead_letters(db: Database, mapping: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """Batches given up by the stream pollers (of ``mapping``, if given), newest first."""
    with db.reading() as r:
        rows = r.scalars(select(DeadLetterRow).order_by(DeadLetterRow.id.desc()).limit(limit * 10))
        found = []
        for row in rows:
            stream = (row.record or {}).get("fileproc", {}).get("stream")
            if stream is None or (mapping is not None and stream != mapping):
                continue
            found.append({"id": row.id, "stream": stream, "function": row.function, "condition": row.condition,
                          "error": row.error, "job": row.job_id, "created_at": _iso(row.created_at),
                          "replayed_at": _iso(row.replayed_at), "record": row.record})
            if len(found) >= limit:
                break
        return found


def dead_letter(db: Database, letter_id: int) -> dict[str, Any] | None:
    """One batch given up by a stream poller, by its id (None: no such stream dead letter)."""
    with db.reading() as r:
        row = r.get(DeadLetterRow, letter_id)
        stream = (row.record or {}).get("fileproc", {}).get("stream") if row is not None else None
        if row is None or stream is None:
            return None
        return {"id": row.id, "stream": stream, "function": row.function, "condition": row.condition,
                "error": row.error, "job": row.job_id, "created_at": _iso(row.created_at),
                "replayed_at": _iso(row.replayed_at), "record": row.record}


def mark_replayed(db: Database, letter_id: int) -> None:
    """The dead letter's records ran again successfully."""
    with db.session() as s:
        s.execute(update(DeadLetterRow).where(DeadLetterRow.id == letter_id).values(replayed_at=db.now(s)))


def _iso(value: datetime | None) -> str | None:
    found = aware(value)
    return found.isoformat() if found else None


__all__ = ["PartitionCounts", "StreamLagRow", "StreamPartitionRow", "dead_letter", "dead_letters", "give_up",
           "lag_history", "mark_replayed", "partitions", "save_lag", "save_partitions"]
