"""Where a Redis stream's mapping stands, against a real Redis: its group's position, moved only by its holder
and only from where that holder left it (a reset, or a worker that took over, always wins)."""

from __future__ import annotations

import uuid

import pytest
import redis

from fileproc.errors import StreamError
from fileproc.mappings import StreamMapping
from fileproc.streams.redis_streams import RedisStreamSource
from fileproc.streams.sources import Record

pytestmark = pytest.mark.timeout(30)


def mapping(redis_url: str) -> StreamMapping:
    name = f"pos-{uuid.uuid4().hex[:8]}"
    return StreamMapping(name=name, source=f"{redis_url}/{name}", function="f")


def take(source: RedisStreamSource, count: int) -> list[Record]:
    records: list[Record] = []
    for _ in range(20):
        records += source.poll(count - len(records), 0.2)
        if len(records) >= count:
            break
    return records


def test_a_reset_while_a_worker_holds_the_stream_is_not_undone_by_the_workers_next_commit(redis_url: str) -> None:
    m = mapping(redis_url)
    writer = RedisStreamSource(m)
    puts = writer.put([(None, f"r{i}".encode()) for i in range(10)])
    revoked: list[list[str]] = []
    worker = RedisStreamSource(m, consumer="worker")
    worker.start(revoked.append)
    done = take(worker, 4)
    worker.commit("0", done[1].position)
    assert writer.status()[0].committed == puts[1].position

    writer.reset("latest")  # (while the worker holds the stream, with records in flight)
    with pytest.raises(StreamError, match="moved"):
        worker.commit("0", done[3].position)
    [status] = writer.status()
    assert (status.committed, status.lag) == (puts[9].position, 0), "the reset stands"
    assert worker.poll(10, 0.2) == [] and revoked == [["0"]], "its batches in flight given up first"
    later = writer.put([(None, b"after")])
    assert [r.data for r in take(worker, 1)] == [b"after"], "read on from where the reset put it"
    worker.commit("0", later[0].position)
    assert writer.status()[0].committed == later[0].position
    for source in (worker, writer):
        source.close()


def test_a_worker_cut_off_past_its_lease_cannot_move_the_position_of_the_one_that_took_over(
        redis_url: str) -> None:
    m = mapping(redis_url)
    writer = RedisStreamSource(m)
    puts = writer.put([(None, f"r{i}".encode()) for i in range(6)])
    old = RedisStreamSource(m, consumer="old")
    old.start(lambda partitions: None)
    taken = take(old, 6)
    redis.Redis.from_url(redis_url).delete(old.lease.key)  # its lease ran out (it hung, say)
    new = RedisStreamSource(m, consumer="new")
    new.start(lambda partitions: None)
    assert [r.data for r in take(new, 6)] == [f"r{i}".encode() for i in range(6)], "nothing was committed"
    new.commit("0", puts[2].position)
    with pytest.raises(StreamError, match="moved"):
        old.commit("0", taken[-1].position)
    assert writer.status()[0].committed == puts[2].position, "the old holder's commit did not land"
    for source in (old, new, writer):
        source.close()


def test_entries_left_pending_by_a_consumer_that_acknowledges_each_are_read_again(redis_url: str) -> None:
    m = mapping(redis_url)
    writer = RedisStreamSource(m)
    puts = writer.put([(None, f"r{i}".encode()) for i in range(5)])
    client = redis.Redis.from_url(redis_url)
    client.xgroup_create(writer.key, m.consumer_group, id="0")
    client.xreadgroup(m.consumer_group, "someone", {writer.key: ">"}, count=3)
    client.xack(writer.key, m.consumer_group, puts[0].position)  # r1 and r2 delivered, never acknowledged
    worker = RedisStreamSource(m, consumer="worker")
    worker.start(lambda partitions: None)
    assert [r.data for r in take(worker, 4)] == [b"r1", b"r2", b"r3", b"r4"]
    worker.commit("0", puts[4].position)
    [status] = writer.status()
    assert (status.committed, status.lag) == (puts[4].position, 0)
    assert not {g["name"]: g for g in client.xinfo_groups(writer.key)}[m.consumer_group.encode()]["pending"]
    for source in (worker, writer):
        source.close()
