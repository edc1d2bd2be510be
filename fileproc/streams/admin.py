"""What the CLI and the API do with a mapping from outside its pollers: where it stands, put records, reset.

:func:`status` joins the engine's positions (committed, newest, lag) with
what the pollers recorded (batches, records, filtered, failed, in flight,
the last error); :func:`put` writes records and returns once the engine
holds them; :func:`reset` moves the consumer group; :func:`replay` runs a
dead letter's records again.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from fileproc.errors import ConfigError, FileprocError
from fileproc.functions.aws import aws_region
from fileproc.runtime.direct import invoke_event
from fileproc.state.streams import dead_letter, mark_replayed, partitions
from fileproc.streams import events
from fileproc.streams.consumers import own_redis
from fileproc.streams.engines import open_source
from fileproc.streams.sources import Put, StreamSource

if TYPE_CHECKING:
    from fileproc.mappings import StreamMapping
    from fileproc.service import Service


def mapping(service: Service, name: str) -> StreamMapping:
    """The mapping named ``name``; ConfigError naming the configured ones otherwise."""
    for found in service.settings.streams:
        if found.name == name:
            return found
    names = ", ".join(m.name for m in service.settings.streams) or "none configured"
    raise ConfigError(f"no stream named {name!r} ({names})")


def source_of(service: Service, found: StreamMapping) -> StreamSource:
    return open_source(found, embedded_url=own_redis(service.settings), consumer="admin")


def status(service: Service, name: str | None = None) -> list[dict[str, Any]]:
    """Each mapping (or ``name``'s) with its partitions: positions, lag, IteratorAge, counts and the last error."""
    chosen = [mapping(service, name)] if name else list(service.settings.streams)
    recorded = {(r["mapping"], r["partition"]): r for r in partitions(service.db)}
    out = []
    for found in chosen:
        entry: dict[str, Any] = {"name": found.name, "source": found.shown_source, "function": found.function,
                                 "enabled": found.enabled, "partitions": [], "error": None}
        try:
            source = source_of(service, found)
            try:
                engine = source.status()
            finally:
                source.close()
        except FileprocError as exc:
            engine, entry["error"] = [], str(exc)
        now = time.time()
        seen = set()
        for p in engine:
            seen.add(p.partition)
            counts = recorded.get((found.name, p.partition), {})
            entry["partitions"].append({
                "partition": p.partition, "committed": p.committed, "newest": p.newest, "lag_records": p.lag,
                "lag_seconds": round(now - p.oldest_unprocessed, 3) if p.oldest_unprocessed and p.lag else 0.0,
                **_counts(counts)})
        for (stream, partition), counts in recorded.items():
            if stream == found.name and partition not in seen and partition:
                entry["partitions"].append({"partition": partition, "committed": None, "newest": None,
                                            "lag_records": None, "lag_seconds": None, **_counts(counts)})
        out.append(entry)
    return out


def _counts(row: dict[str, Any]) -> dict[str, Any]:
    return {name: row.get(name, 0) for name in ("batches", "records", "filtered", "failed", "errors", "in_flight")} \
        | {"last_error": row.get("last_error"), "last_error_at": row.get("last_error_at")}


_writers: dict[tuple[int, str], tuple[StreamSource, threading.Lock]] = {}
_writers_lock = threading.Lock()


def put(service: Service, name: str, records: Sequence[tuple[bytes | None, bytes]]) -> list[Put]:
    """Append ``records`` (key, data) to stream ``name``; returns once they are in the stream.

    The connection is kept for the next put of this process (a Kafka
    producer takes a second to start: ``POST /streams/NAME/records`` must
    not pay it per request).
    """
    found = mapping(service, name)
    key = (id(service), name)
    with _writers_lock:
        kept = _writers.get(key)
        if kept is None:
            kept = _writers[key] = (source_of(service, found), threading.Lock())
    source, lock = kept
    try:
        with lock:
            return source.put(records)
    except FileprocError:  # a connection gone bad: the next put opens another
        with _writers_lock:
            if _writers.get(key) is kept:
                del _writers[key]
        with contextlib.suppress(FileprocError):
            source.close()
        raise


@dataclass(frozen=True)
class Replayed:
    """What came of running a dead letter's records again."""

    records: int  # found in the stream (fewer than the batch's if some expired)
    batch_size: int
    ok: bool
    error: dict[str, Any] | None = None
    job_id: int | None = None


def replay(service: Service, letter_id: int) -> Replayed:
    """Run the records of stream dead letter ``letter_id`` through its mapping's function again, now.

    The records are read from the stream by their positions (a dead letter
    keeps positions, not data, as Lambda's does), so only those still in the
    stream run; ConfigError if there is no such dead letter or its mapping is
    gone. Marked replayed when the function succeeds.
    """
    letter = dead_letter(service.db, letter_id)
    if letter is None:
        raise ConfigError(f"no stream dead letter #{letter_id} (fileproc streams dead-letters lists them)")
    found = mapping(service, letter["stream"])
    info = letter["record"].get("KinesisBatchInfo") or letter["record"].get("KafkaBatchInfo") or {}
    first = str(info.get("startSequenceNumber", info.get("startOffset")))
    last = str(info.get("endSequenceNumber", info.get("endOffset")))
    partition = str(letter["record"]["fileproc"]["partition"])
    source = source_of(service, found)
    try:
        records = source.read(partition, first, last)
    finally:
        source.close()
    if not records:
        return Replayed(0, int(info.get("batchSize") or 0), False,
                        {"errorType": "RecordsExpired", "errorMessage": "none of its records is in the stream now"})
    region = aws_region(service.settings)
    batch = events.batch_of(records, kafka=found.engine == "kafka", region=region,
                            arn=events.stream_arn(region, getattr(source, "stream_name", found.name)),
                            topic=getattr(source, "topic", ""),
                            bootstrap_servers=getattr(source, "bootstrap_servers", ""))
    done = invoke_event(service, found.function, batch, trigger=f"stream:{found.name}",
                        what=f"{events.shard_id(partition)}/{first}-{last} (replay of #{letter_id})",
                        summary={"stream": found.name, "partition": partition, "first": first, "last": last,
                                 "records": len(records), "replay_of": letter_id})
    if done.ok:
        mark_replayed(service.db, letter_id)
    return Replayed(len(records), int(info.get("batchSize") or len(records)), done.ok, done.error, done.job_id)


def reset(service: Service, name: str, to: str) -> None:
    """Move the mapping's group to ``trim_horizon``, ``latest`` or an ISO time."""
    target: str | datetime = to
    if to not in ("trim_horizon", "latest"):
        try:
            target = datetime.fromisoformat(to)
        except ValueError:
            raise ConfigError(f"--to {to!r}: use trim_horizon, latest or an ISO time (2026-12-05T12:00:00+00:00)") \
                from None
    source = source_of(service, mapping(service, name))
    try:
        source.reset(target)
    finally:
        source.close()


__all__ = ["Replayed", "mapping", "put", "replay", "reset", "status"]
