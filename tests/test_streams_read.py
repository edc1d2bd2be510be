"""Reading a range of a Redis stream without consuming it (a dead letter's replay), against a real Redis.

Kafka's and NATS' ``read`` are tested with their engines (test_streams_kafka.py, test_streams_nats.py).
"""

from __future__ import annotations

import uuid

import pytest
import redis

from fileproc.errors import StreamError
from fileproc.mappings import StreamMapping
from fileproc.streams.redis_lists import RedisListSource
from fileproc.streams.redis_streams import RedisStreamSource
from fileproc.streams.sources import Record

pytestmark = pytest.mark.timeout(30)


def mapping(redis_url: str, scheme: str = "redis") -> StreamMapping:
    name = f"read-{uuid.uuid4().hex[:8]}"
    return StreamMapping(name=name, source=f"{redis_url.replace('redis://', scheme + '://', 1)}/{name}",
                         function="f")


def take(source: RedisStreamSource, count: int) -> list[Record]:
    records: list[Record] = []
    for _ in range(20):
        records += source.poll(count - len(records), 0.2)
        if len(records) == count:
            break
    return records


def test_read_gives_a_range_in_order_and_consumes_nothing(redis_url: str) -> None:
    m = mapping(redis_url)
    writer = RedisStreamSource(m)
    puts = writer.put([(f"k{i % 3}".encode(), f"r{i}".encode()) for i in range(10)])
    worker = RedisStreamSource(m, consumer="worker")
    worker.start(lambda partitions: None)
    done = take(worker, 4)
    worker.commit("0", done[-1].position)
    [before] = writer.status()
    assert (before.committed, before.lag) == (puts[3].position, 6)

    reader = RedisStreamSource(m)  # as the replay's: another process, not the group's holder
    got = reader.read("0", puts[2].position, puts[7].position)
    assert [(r.data, r.key, r.partition, r.position) for r in got] == \
        [(f"r{i}".encode(), f"k{i % 3}".encode(), "0", puts[i].position) for i in range(2, 8)]
    assert got[0] == done[2], "the record a consumer was given"
    [after] = reader.status()
    assert (after.committed, after.lag) == (before.committed, before.lag)
    assert [r.data for r in take(worker, 6)] == [f"r{i}".encode() for i in range(4, 10)], "nothing was taken"

    client = redis.Redis.from_url(redis_url)
    client.xdel(reader.key, puts[5].position)  # trimmed since: missing, the rest found
    assert [r.data for r in reader.read("0", puts[4].position, puts[6].position)] == [b"r4", b"r6"]
    assert reader.read("0", "99999999999999-0", "99999999999999-9") == [], "past the newest: nothing"
    with pytest.raises(StreamError, match="one partition"):
        reader.read("1", puts[0].position, puts[1].position)
    with pytest.raises(StreamError, match="cannot read"):
        reader.read("0", "yesterday", "today")
    for source in (worker, reader, writer):
        source.close()


def test_a_redis_list_has_nothing_to_read(redis_url: str) -> None:
    source = RedisListSource(mapping(redis_url, "redis-list"))
    source.put([(None, b"x")])
    with pytest.raises(StreamError, match="a Redis list keeps no records once taken: nothing to replay"):
        source.read("0", "1", "1")
    source.close()
