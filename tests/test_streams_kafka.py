"""The Kafka engine against a real Apache Kafka broker (KRaft): order, commits, starts, rebalances, restarts.

A worker here is a :class:`KafkaSource` driven by hand as the poller drives
it (``start``, ``poll``, ``commit``, ``close``), with a ``revoking`` that
commits what it was given, as the poller commits its batches in flight. One
broker serves the module; each test has topics (and so groups) of its own.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from confluent_kafka import Producer, TopicPartition

from fileproc.errors import StreamError
from fileproc.mappings import StreamMapping
from fileproc.streams import kafka as engine
from fileproc.streams.kafka import KafkaSource
from fileproc.streams.sources import Record
from tests.kafka_server import KafkaBroker, kafka_server
from tests.servers import free_port

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def kafka() -> Iterator[KafkaBroker]:
    """One broker for the module's tests."""
    with kafka_server() as broker:
        yield broker


_topics = iter(range(1_000_000))


def mapping(kafka: KafkaBroker, partitions: int = 3, **settings: object) -> StreamMapping:
    """A mapping of a new topic of ``partitions`` partitions (its group is new too)."""
    topic = f"t{next(_topics)}"
    kafka.create_topic(topic, partitions)
    return StreamMapping(name=f"m-{topic}", source=f"kafka://{kafka.bootstrap}/{topic}", function="f",
                         **settings)  # type: ignore[arg-type]


class Worker:
    """A source as the poller uses it: it remembers what it was given, and commits it when revoked."""

    def __init__(self, mapping: StreamMapping, name: str = "w") -> None:
        self.source = KafkaSource(mapping, consumer=name)
        self.given: list[Record] = []
        self.revoked: list[tuple[list[str], list[str]]] = []  # (revoked, held when revoking was called)
        self.source.start(self.revoking)

    def revoking(self, partitions: list[str]) -> None:
        self.revoked.append((partitions, self.source.partitions))
        self.commit(partitions)

    def take(self, count: int, within: float = 15.0, others: tuple[Worker, ...] = ()) -> list[Record]:
        """Poll until ``count`` more records came (or ``within`` s passed); ``others`` are polled too."""
        start = len(self.given)
        deadline = time.monotonic() + within
        while len(self.given) - start < count and time.monotonic() < deadline:
            self.given += self.source.poll(100, 0.1)
            for other in others:
                other.given += other.source.poll(100, 0.05)
        return self.given[start:]

    def wait_holding(self, count: int, others: tuple[Worker, ...] = (), within: float = 15.0) -> None:
        """Poll (the assignment comes through polls) until this worker holds ``count`` partitions."""
        deadline = time.monotonic() + within
        while len(self.source.partitions) != count and time.monotonic() < deadline:
            self.given += self.source.poll(100, 0.05)
            for other in others:
                other.given += other.source.poll(100, 0.05)
        assert len(self.source.partitions) == count, self.source.partitions

    def commit(self, partitions: list[str] | None = None) -> None:
        """Commit the last record given of each partition (of ``partitions``)."""
        last = {r.partition: r.position for r in self.given}
        for partition, position in last.items():
            if partitions is None or partition in partitions:
                self.source.commit(partition, position)

    def close(self) -> None:
        self.source.close()


def put(source: KafkaSource, count: int, prefix: str = "r", keys: int = 6) -> list[tuple[bytes, bytes]]:
    records = [(f"k{i % keys}".encode(), f"{prefix}{i}".encode()) for i in range(count)]
    source.put(records)
    return records


def writer(m: StreamMapping) -> KafkaSource:
    return KafkaSource(m, consumer="admin")


def data(records: list[Record]) -> list[bytes]:
    return [r.data for r in records]


# -- put and poll -----------------------------------------------------------------------------


def test_put_records_come_in_order_per_partition_and_key(kafka: KafkaBroker) -> None:
    m = mapping(kafka)
    out = writer(m)
    records = [(f"k{i % 6}".encode(), f"r{i}".encode()) for i in range(90)]
    puts = out.put(records)
    assert len(puts) == 90 and {p.partition for p in puts} == {"0", "1", "2"}
    worker = Worker(m)
    got = worker.take(90)
    assert sorted(data(got)) == sorted(d for _, d in records)
    for partition in ("0", "1", "2"):
        positions = [int(r.position) for r in got if r.partition == partition]
        assert positions == sorted(positions) == list(range(len(positions)))
    for key in {k for k, _ in records}:  # a key keeps one partition, and its order
        assert data([r for r in got if r.key == key]) == [d for k, d in records if k == key]
        assert len({r.partition for r in got if r.key == key}) == 1
    where = {(p.partition, p.position) for p in puts}
    assert where == {(r.partition, r.position) for r in got}
    first = got[0]
    assert first.timestamp_type == "CREATE_TIME" and abs(first.timestamp - time.time()) < 60
    assert out.event_source_arn == out.bootstrap_servers == kafka.bootstrap and out.topic == m.source.rsplit("/")[-1]
    worker.close()
    out.close()


def test_headers_and_a_null_value_come_as_given(kafka: KafkaBroker) -> None:
    m = mapping(kafka, partitions=1)
    producer = Producer({"bootstrap.servers": kafka.bootstrap})
    producer.produce(m.source.rsplit("/")[-1], value=b"v", key=None, headers=[("h", b"1"), ("h", b"2"), ("n", None)])
    producer.produce(m.source.rsplit("/")[-1], value=None, key=b"k")
    producer.flush(10)
    worker = Worker(m)
    first, second = worker.take(2)
    assert first.headers == (("h", b"1"), ("h", b"2"), ("n", b"")) and first.key is None and first.data == b"v"
    assert second.data == b"" and second.key == b"k"
    worker.close()


# -- commits ----------------------------------------------------------------------------------


def test_a_new_consumer_resumes_after_the_commits_and_gets_what_was_not_committed_again(kafka: KafkaBroker) -> None:
    m = mapping(kafka)
    out = writer(m)
    put(out, 60)
    first = Worker(m, "first")
    got = first.take(60)
    done = {}
    for partition in ("0", "1", "2"):
        mine = [r for r in got if r.partition == partition]
        done[partition] = mine[len(mine) // 2]  # commit up to the middle of each partition
        first.source.commit(partition, done[partition].position)
    first.source._revoking = None  # as if killed: nothing more is committed
    first.close()

    second = Worker(m, "second")
    expected = [r for r in got if int(r.position) > int(done[r.partition].position)]
    again = second.take(len(expected)) + second.take(1, within=0.5)
    assert sorted((r.partition, int(r.position)) for r in again) == \
        sorted((r.partition, int(r.position)) for r in expected)
    second.close()
    out.close()


# -- starting positions -----------------------------------------------------------------------


def test_trim_horizon_latest_and_at_timestamp(kafka: KafkaBroker) -> None:
    m = mapping(kafka)
    out = writer(m)
    put(out, 9, "old")
    time.sleep(0.05)
    middle = datetime.now(UTC)
    time.sleep(0.05)
    put(out, 9, "new")

    oldest = Worker(m.model_copy(update={"group": "from-start"}))
    assert sorted(data(oldest.take(18))) == sorted([f"old{i}".encode() for i in range(9)] +
                                                   [f"new{i}".encode() for i in range(9)])
    at = Worker(m.model_copy(update={"group": "at", "starting_position": "at_timestamp",
                                     "starting_timestamp": middle}))
    assert sorted(data(at.take(9, within=3))) == sorted(f"new{i}".encode() for i in range(9))
    latest = Worker(m.model_copy(update={"group": "latest", "starting_position": "latest"}))
    latest.wait_holding(3)
    for worker in (oldest, at, latest):
        worker.close()

    # "latest" was pinned when the group first started: what came while it was down is not skipped.
    put(out, 6, "later")
    latest = Worker(m.model_copy(update={"group": "latest", "starting_position": "latest"}))
    assert sorted(data(latest.take(6, within=3))) == sorted(f"later{i}".encode() for i in range(6))
    latest.close()
    out.close()


# -- status and reset -------------------------------------------------------------------------


def test_status_gives_positions_lag_and_the_age_of_the_oldest_unprocessed(kafka: KafkaBroker) -> None:
    m = mapping(kafka, partitions=1)
    out = writer(m)
    put(out, 10)
    assert out.status()[0].lag == 10 and out.status()[0].committed is None
    worker = Worker(m)
    got = worker.take(10)
    worker.source.commit("0", got[3].position)

    status = writer(m).status()  # another source, not in the group (as the CLI's)
    assert [(s.partition, s.committed, s.newest, s.lag) for s in status] == [("0", "3", "9", 6)]
    assert status[0].oldest_unprocessed == got[4].timestamp
    worker.commit()
    status = out.status()
    assert (status[0].committed, status[0].lag, status[0].oldest_unprocessed) == ("9", 0, None)
    worker.close()
    out.close()


def test_reset_moves_the_group_and_refuses_while_it_has_consumers(kafka: KafkaBroker) -> None:
    m = mapping(kafka)
    out = writer(m)
    put(out, 12, "a")
    worker = Worker(m)
    worker.take(12)
    worker.commit()
    with pytest.raises(StreamError, match="active consumer"):
        out.reset("trim_horizon")
    worker.close()

    out.reset("trim_horizon")
    assert sum(s.lag or 0 for s in out.status()) == 12
    worker = Worker(m)
    assert len(worker.take(12)) == 12
    worker.close()

    out.reset("latest")
    assert sum(s.lag or 0 for s in out.status()) == 0
    time.sleep(0.05)
    middle = datetime.now(UTC)
    put(out, 6, "b")
    out.reset(middle)
    worker = Worker(m)
    assert sorted(data(worker.take(6, within=3))) == sorted(f"b{i}".encode() for i in range(6))
    worker.close()
    with pytest.raises(StreamError, match="trim_horizon, latest or a time"):
        out.reset("yesterday")

    fresh = writer(m.model_copy(update={"group": "never-started"}))  # a group is made by its reset
    fresh.reset("latest")
    put(out, 3, "c")
    worker = Worker(m.model_copy(update={"group": "never-started"}))
    assert sorted(data(worker.take(3, within=3))) == [b"c0", b"c1", b"c2"]
    worker.close()
    out.close()


# -- reading a range (a dead letter's replay) -------------------------------------------------


def test_read_gives_a_range_of_a_partition_as_poll_did_and_consumes_nothing(kafka: KafkaBroker) -> None:
    m = mapping(kafka, partitions=2)
    out = writer(m)
    put(out, 20, keys=1)  # one key: every record in one partition
    worker = Worker(m)
    given = worker.take(20)
    partition = given[0].partition
    worker.source.commit(partition, given[3].position)
    before = [(s.partition, s.committed, s.lag) for s in out.status()]
    assert (partition, "3", 16) in before

    reader = writer(m)  # as the replay's: not in the group
    got = reader.read(partition, "2", "7")
    assert got == given[2:8], "the records as poll gave them (data, key, position, headers, time)"
    assert [(r.data, r.key, r.position) for r in got] == [(f"r{i}".encode(), b"k0", str(i)) for i in range(2, 8)]
    assert [(s.partition, s.committed, s.lag) for s in out.status()] == before, "the group did not move"
    assert reader.read(partition, "18", "40") == given[18:], "up to the newest"
    assert reader.read(partition, "20", "30") == []
    assert reader.read(str(1 - int(partition)), "0", "5") == [], "an empty partition"

    topic = m.source.rsplit("/", 1)[1]
    deleted = reader._admin_client().delete_records([TopicPartition(topic, int(partition), 5)])
    for future in deleted.values():
        future.result(10)  # retention took 0..4: those are missing
    assert reader.read(partition, "2", "7") == given[5:8]
    with pytest.raises(StreamError, match="are numbers"):
        reader.read(partition, "first", "7")
    with pytest.raises(StreamError, match="cannot read partition 9"):
        reader.read("9", "0", "1")
    for source in (worker, reader, out):
        source.close()


# -- rebalances -------------------------------------------------------------------------------


def test_two_consumers_split_the_partitions_and_one_leaving_loses_nothing(kafka: KafkaBroker) -> None:
    m = mapping(kafka)
    out = writer(m)
    put(out, 30, "a")
    one = Worker(m, "one")
    one.take(30)  # all partitions, given and not committed: "in flight"

    two = Worker(m, "two")
    two.wait_holding(1, others=(one,))
    one.wait_holding(2, others=(two,))
    assert sorted(one.source.partitions + two.source.partitions) == ["0", "1", "2"]
    moved = [p for revoked, _ in one.revoked for p in revoked]
    assert moved == two.source.partitions
    assert all(set(revoked) <= set(held) for revoked, held in one.revoked)  # called before giving them up

    put(out, 30, "b")
    take_together([one, two], 30)
    assert {r.partition for r in two.given} == set(two.source.partitions)
    one.close()  # in flight: committed by revoking before the partitions go
    assert sorted(one.revoked[-1][0]) == sorted(one.revoked[-1][1]) == sorted(set("012") - set(moved))

    two.wait_holding(3)
    put(out, 30, "c")
    two.take(30)
    everything = data(one.given) + data(two.given)
    expected = [f"{p}{i}".encode() for p in "abc" for i in range(30)]
    assert sorted(everything) == sorted(expected)  # nothing lost, nothing twice
    two.close()
    out.close()


def take_together(workers: list[Worker], count: int, within: float = 15.0) -> None:
    """Poll every worker until ``count`` more records came to them together."""
    start = sum(len(w.given) for w in workers)
    deadline = time.monotonic() + within
    while sum(len(w.given) for w in workers) - start < count and time.monotonic() < deadline:
        for worker in workers:
            worker.given += worker.source.poll(100, 0.05)


# -- failures ---------------------------------------------------------------------------------


def test_a_broker_restarted_mid_stream_loses_nothing(kafka: KafkaBroker, monkeypatch: pytest.MonkeyPatch) -> None:
    m = mapping(kafka)
    out = writer(m)
    put(out, 30, "a")
    worker = Worker(m)
    worker.take(30)
    worker.commit()
    leaving = Worker(mapping(kafka, partitions=1), "leaving")
    leaving.wait_holding(1)

    kafka.stop()
    monkeypatch.setattr(engine, "TIMEOUT", 1.0)
    began = time.monotonic()
    leaving.close()  # it cannot tell the group: it stops waiting for an answer
    assert time.monotonic() - began < 3
    monkeypatch.undo()
    failures: list[StreamError] = []
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:  # what the poller sees while it is down: nothing, or a StreamError
        try:
            assert worker.source.poll(100, 0.1) == []
        except StreamError as exc:
            failures.append(exc)
    kafka.start()
    assert all("cannot be reached" in str(f) for f in failures)

    put(out, 30, "b")
    worker.take(30, within=20)
    assert sorted(set(data(worker.given))) == sorted([f"{p}{i}".encode() for p in "ab" for i in range(30)])
    worker.close()
    out.close()


def test_an_unreachable_broker_is_a_stream_error_saying_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "TIMEOUT", 1.0)
    nowhere = StreamMapping(name="nowhere", source=f"kafka://127.0.0.1:{free_port()}/t", function="f")
    source = KafkaSource(nowhere)
    with pytest.raises(StreamError, match=r"Kafka at 127\.0\.0\.1:\d+ \(topic 't'\): .*cannot be reached"):
        source.status()
    with pytest.raises(StreamError, match="not written"):
        source.put([(None, b"x")])
    source.start(lambda partitions: None)
    with pytest.raises(StreamError, match="cannot be reached"):
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            source.poll(10, 0.2)
    source.close()


def test_a_missing_topic_is_a_stream_error(kafka: KafkaBroker, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "TOPIC_CHECK_EVERY", 0.3)
    m = StreamMapping(name="missing", source=f"kafka://{kafka.bootstrap}/no-such-topic", function="f")
    with pytest.raises(StreamError, match="no such topic"):
        KafkaSource(m).status()
    worker = Worker(m)
    with pytest.raises(StreamError, match="no such topic"):
        worker.take(1, within=5)
    kafka.create_topic("no-such-topic")  # made later: the group takes it up
    put(writer(m), 1)
    assert len(worker.take(1)) == 1
    worker.close()


def test_a_broker_without_kip_848_groups_is_joined_the_classic_way() -> None:
    with kafka_server(settings={"group.coordinator.rebalance.protocols": "classic"}) as classic:
        m = mapping(classic, partitions=2)
        out = writer(m)
        put(out, 10)
        worker = Worker(m)
        assert len(worker.take(10)) == 10 and worker.source.protocol == "classic"
        worker.commit()
        assert sum(s.lag or 0 for s in out.status()) == 0
        worker.close()
        out.close()
