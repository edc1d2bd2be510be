"""The NATS JetStream engine against a real nats-server: order, commits, standbys, restarts.

A worker here is a :class:`NatsSource` driven by hand as the poller drives
it: ``start``, ``poll``, ``commit``, ``close``. ACK_WAIT, PIN_TTL and
HEARTBEAT are shortened (``quick``) where a test waits for them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from fileproc.errors import StreamError
from fileproc.mappings import StreamMapping
from fileproc.streams import nats as engine
from fileproc.streams.nats import NatsSource
from fileproc.streams.sources import Record
from tests.nats_server import NatsServer, nats_server

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def nats() -> Iterator[NatsServer]:
    """One nats-server for the module's tests (each uses its own subject, so its own stream)."""
    with nats_server() as server:
        yield server


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    """Redelivery after 1.5 s, pins moved after 2.5 s, heartbeats every 0.3 s: tests wait seconds, not minutes."""
    monkeypatch.setattr(engine, "ACK_WAIT", 1.5)
    monkeypatch.setattr(engine, "PIN_TTL", 2.5)
    monkeypatch.setattr(engine, "HEARTBEAT", 0.3)


_subjects = iter(range(1_000_000))


def mapping(server: NatsServer, subject: str | None = None, **settings: object) -> StreamMapping:
    subject = subject or f"t{next(_subjects)}"
    return StreamMapping(name=f"m-{subject.replace('>', 'all').replace('*', 'any')}",
                         source=f"{server.url}/{subject}", function="f", **settings)  # type: ignore[arg-type]


class Worker:
    """A source as the poller uses it, remembering what it was given and what revoking it heard."""

    def __init__(self, mapping: StreamMapping, name: str = "w") -> None:
        self.source = NatsSource(mapping, consumer=name)
        self.revoked: list[list[str]] = []
        self.source.start(self.revoked.append)

    def take(self, count: int, within: float = 10.0, max_records: int = 100) -> list[Record]:
        """Poll until ``count`` records came (or ``within`` s passed)."""
        records: list[Record] = []
        deadline = time.monotonic() + within
        while len(records) < count and time.monotonic() < deadline:
            records += self.source.poll(max_records, 0.5)
        return records

    def commit_all(self, records: list[Record]) -> None:
        last: dict[str, str] = {}
        for record in records:
            last[record.partition] = record.position
        for partition, position in last.items():
            self.source.commit(partition, position)

    def kill(self) -> None:
        """Vanish as a killed process does: the connection drops, nothing is NAKed or unpinned."""
        loop, client = self.source._loop, self.source._nc
        assert loop is not None and client is not None
        loop.run(client.close(), 5)
        loop.stop()
        self.source._loop = None


def put(source: NatsSource | Worker, *records: tuple[bytes | None, bytes]) -> list[str]:
    target = source.source if isinstance(source, Worker) else source
    return [p.position for p in target.put(list(records))]


def datas(records: list[Record]) -> list[bytes]:
    return [r.data for r in records]


def test_records_come_in_stream_order_with_their_subject_key_and_time(nats: NatsServer) -> None:
    m = mapping(nats, "orders.>")
    writer = NatsSource(m)
    before = time.time()
    puts = writer.put([(b"eu", b"e1"), (b"us", b"u1"), (b"eu", b"e2"), (b"us", b"u2")])
    writer.close()
    assert [(p.partition, p.position) for p in puts] == [("orders.eu", "1"), ("orders.us", "2"),
                                                         ("orders.eu", "3"), ("orders.us", "4")]
    worker = Worker(m)
    records = worker.take(4)
    assert datas(records) == [b"e1", b"u1", b"e2", b"u2"]
    assert [(r.partition, r.position, r.key) for r in records][:2] == [("orders.eu", "1", b"eu"),
                                                                      ("orders.us", "2", b"us")]
    assert before - 1 <= records[0].timestamp <= time.time() + 1
    assert worker.source.poll(10, 0.2) == []  # nothing twice in one holding
    worker.source.close()


def test_a_new_consumer_resumes_after_the_commit_and_gets_the_uncommitted_again(nats: NatsServer) -> None:
    m = mapping(nats)
    first = Worker(m)
    put(first, *[(None, b"%d" % i) for i in range(1, 11)])
    records = first.take(10)
    assert datas(records) == [b"%d" % i for i in range(1, 11)]
    first.source.commit(records[5].partition, records[5].position)  # 1..6 done, 7..10 handed out only
    first.source.close()  # 7..10 were not acked: the next holding starts at the ack floor

    second = Worker(m)
    again = second.take(4, within=3)
    assert datas(again) == [b"7", b"8", b"9", b"10"]
    assert second.source.poll(10, 0.2) == []
    second.commit_all(again)
    second.source.close()
    third = Worker(m)
    assert third.source.poll(10, 0.3) == []
    third.source.close()


def test_a_killed_workers_records_come_again_in_order_before_later_ones(nats: NatsServer, quick: None) -> None:
    m = mapping(nats)
    killed = Worker(m, "killed")
    put(killed, *[(None, b"%d" % i) for i in range(1, 6)])
    held = killed.take(5)
    killed.source.commit(held[1].partition, held[1].position)  # 1, 2 done
    killed.kill()

    standby = Worker(m, "standby")
    put(standby, (None, b"6"))
    started = time.monotonic()
    records = standby.take(4, within=8)
    took = time.monotonic() - started
    assert datas(records) == [b"3", b"4", b"5", b"6"], "uncommitted first, in order, then the new one"
    assert took < 4.5, f"the pin moved after {took:.1f}s (PIN_TTL 2.5 s)"
    standby.commit_all(records)
    standby.source.close()


def test_a_subject_ahead_of_the_ack_floor_is_not_given_again_after_a_handover(nats: NatsServer) -> None:
    m = mapping(nats, "fleet.>")
    first = Worker(m, "first")
    put(first, (b"a", b"a1"), (b"b", b"b1"), (b"a", b"a2"), (b"b", b"b2"), (b"b", b"b3"))
    records = first.take(5)
    first.source.commit("fleet.a", records[0].position)  # a1 done, a2 not: the ack floor stays at 1
    first.source.commit("fleet.b", records[4].position)  # b1..b3 done, above the floor
    first.source.close()
    second = Worker(m, "second")
    put(second, (b"b", b"b4"))
    assert datas(second.take(2, within=3)) == [b"a2", b"b4"]
    assert second.source.poll(10, 0.2) == []
    second.source.close()


def test_one_worker_consumes_at_a_time_and_a_standby_takes_over_when_it_closes(nats: NatsServer,
                                                                              quick: None) -> None:
    m = mapping(nats)
    active = Worker(m, "active")
    put(active, *[(None, b"%d" % i) for i in range(1, 5)])
    assert datas(active.take(2, max_records=2)) == [b"1", b"2"]
    standby = Worker(m, "standby")
    # Held past ACK_WAIT: heartbeats keep the records, pulls keep the pin; the standby gets nothing.
    assert standby.take(1, within=2.5) == []
    records = active.take(2)
    assert datas(records) == [b"3", b"4"]
    active.source.commit(records[0].partition, "3")  # 4 not done
    active.source.close()
    moved = time.monotonic()
    got = standby.take(1, within=3)
    assert datas(got) == [b"4"]
    assert time.monotonic() - moved < 1.5, "close unpins: the standby should not wait for PIN_TTL"
    standby.source.close()


@pytest.mark.parametrize("position", ["trim_horizon", "latest", "at_timestamp"])
def test_a_new_consumer_starts_at_its_starting_position(nats: NatsServer, position: str) -> None:
    subject = f"start{next(_subjects)}"
    writer = NatsSource(mapping(nats, subject))
    put(writer, (None, b"old"))
    time.sleep(0.05)
    middle = datetime.now(UTC)
    put(writer, (None, b"middle"))
    settings: dict[str, object] = {"starting_position": position}
    if position == "at_timestamp":
        settings["starting_timestamp"] = middle
    worker = Worker(mapping(nats, subject, **settings))
    put(writer, (None, b"new"))
    writer.close()
    expected = {"trim_horizon": [b"old", b"middle", b"new"], "latest": [b"new"],
                "at_timestamp": [b"middle", b"new"]}[position]
    assert datas(worker.take(len(expected), within=3)) == expected
    assert worker.source.poll(10, 0.2) == []
    worker.source.close()


def test_status_reports_the_committed_position_the_newest_and_the_lag(nats: NatsServer) -> None:
    m = mapping(nats)
    reader = NatsSource(m)
    [row] = reader.status()
    assert (row.committed, row.newest, row.lag) == (None, None, 0), "no stream yet: nothing to do"
    put(reader, *[(None, b"%d" % i) for i in range(1, 6)])
    [row] = reader.status()
    assert (row.committed, row.newest, row.lag) == (None, "5", None), "no consumer yet"

    worker = Worker(m)
    records = worker.take(5)
    worker.source.commit(records[2].partition, records[2].position)
    [row] = reader.status()
    assert (row.partition, row.committed, row.newest, row.lag) == (m.source.rsplit("/", 1)[1], "3", "5", 2)
    assert row.oldest_unprocessed == pytest.approx(records[3].timestamp, abs=0.001)
    worker.commit_all(records)
    [row] = reader.status()
    assert (row.committed, row.lag, row.oldest_unprocessed) == ("5", 0, None)
    worker.source.close()
    reader.close()


def test_reset_moves_the_consumer(nats: NatsServer) -> None:
    m = mapping(nats)
    worker = Worker(m)
    put(worker, (None, b"1"), (None, b"2"))
    time.sleep(0.05)
    between = datetime.now(UTC)
    put(worker, (None, b"3"))
    worker.commit_all(worker.take(3))
    worker.source.close()

    for to, expected in (("trim_horizon", [b"1", b"2", b"3"]), (between, [b"3"]), ("latest", [])):
        admin = NatsSource(m)
        admin.reset(to)
        admin.close()
        worker = Worker(m)
        assert datas(worker.take(len(expected) or 1, within=1.5 if not expected else 5)) == expected, to
        worker.source.close()


def test_read_gives_a_subjects_range_as_poll_did_and_consumes_nothing(nats: NatsServer) -> None:
    m = mapping(nats, "reads.>")
    worker = Worker(m)
    put(worker, *[(k, b"%s%d" % (k, i)) for i in range(1, 6) for k in (b"a", b"b")])  # a1 b1 a2 b2 ...: seqs 1..10
    given = worker.take(10)
    worker.source.commit("reads.a", "3")
    worker.source.commit("reads.b", "4")  # 1..4 done, 5..10 handed out, not acked
    before = worker.source.status()
    assert [(s.committed, s.newest, s.lag) for s in before] == [("4", "10", 6)]

    reader = NatsSource(m)  # as the replay's: not the consumer's holder
    got = reader.read("reads.a", "2", "9")  # the other subject's sequences skipped
    assert got == [r for r in given if r.partition == "reads.a" and 2 <= int(r.position) <= 9], \
        "the records as poll gave them (data, key, position, headers, time)"
    assert [(r.data, r.key, r.position) for r in got] == [(b"a2", b"a", "3"), (b"a3", b"a", "5"),
                                                         (b"a4", b"a", "7"), (b"a5", b"a", "9")]
    assert reader.status() == before, "the consumer did not move"
    assert worker.source.poll(10, 0.3) == [], "nothing given again"
    assert reader.read("reads.b", "9", "40") == [given[9]], "up to the newest"
    assert reader.read("reads.c", "1", "10") == []

    reader._run(reader._api(f"STREAM.MSG.DELETE.{reader.stream}", {"seq": 5}))  # deleted (or expired) since
    assert [r.position for r in reader.read("reads.a", "1", "10")] == ["1", "3", "7", "9"]
    with pytest.raises(StreamError, match="stream sequence"):
        reader.read("reads.a", "first", "9")
    nowhere = NatsSource(mapping(nats))
    with pytest.raises(StreamError, match="no JetStream stream holds"):
        nowhere.read(nowhere.subject, "1", "2")
    for source in (worker.source, reader, nowhere):
        source.close()


def test_a_server_restarted_mid_stream_loses_nothing(quick: None) -> None:
    with nats_server() as server:
        m = mapping(server)
        worker = Worker(m)
        put(worker, *[(None, b"%d" % i) for i in range(1, 21)])
        first = worker.take(10, max_records=10)
        worker.source.commit(first[4].partition, first[4].position)  # 1..5 done; 6..10 in flight

        server.stop()
        # A commit while the server is away waits for it (up to COMMIT_TIMEOUT) rather than failing.
        committing = threading.Thread(target=worker.source.commit, args=(first[6].partition, first[6].position))
        committing.start()
        time.sleep(0.5)
        server.start()
        committing.join(20)
        assert not committing.is_alive()
        worker.commit_all(first)
        put(worker, *[(None, b"%d" % i) for i in range(21, 31)])  # after the restart

        processed = [int(r.data) for r in first]
        deadline = time.monotonic() + 15
        while len(set(processed)) < 30 and time.monotonic() < deadline:
            batch = worker.source.poll(10, 0.5)
            processed += [int(r.data) for r in batch]
            worker.commit_all(batch)
        assert set(processed) == set(range(1, 31)), f"lost: {sorted(set(range(1, 31)) - set(processed))}"
        again = [n for n in processed[10:] if n <= 10]
        assert again == [], f"committed records came again: {again}"
        assert processed == sorted(processed), "order kept"
        # The restarted server forgot the pin: a rebalance, told to the poller before anything came again.
        assert worker.revoked == [[m.source.rsplit("/", 1)[1]]]
        worker.source.close()


def test_put_to_a_wildcard_subject_needs_a_key_and_keys_are_text(nats: NatsServer) -> None:
    source = NatsSource(mapping(nats, "devices.*.temp"))
    assert [p.partition for p in source.put([(b"kitchen", b"20")])] == ["devices.kitchen.temp"]
    with pytest.raises(StreamError, match="needs a key"):
        source.put([(None, b"21")])
    with pytest.raises(StreamError, match="UTF-8"):
        source.put([(b"hall", b"19"), (b"\xff", b"21")])
    assert [p.position for p in source.put([(b"hall", b"18")])] == ["2"], "the refused put stored nothing"
    source.close()


def test_an_unreachable_server_is_one_clear_error() -> None:
    from tests.servers import free_port

    source = NatsSource(StreamMapping(name="gone", source=f"nats://127.0.0.1:{free_port()}/x", function="f"))
    started = time.monotonic()
    with pytest.raises(StreamError, match=r"cannot reach NATS at 127\.0\.0\.1:\d+: connection refused"):
        source.status()
    assert time.monotonic() - started < engine.CONNECT_TIMEOUT + 1
    source.close()
