"""RabbitMQ as a stream engine: a real node, a queue consumed one worker at a time, and MinIO's notify_amqp.

The engine's promises are tested on the engine itself (:class:`AmqpSource`
against a real RabbitMQ): the queue's order; a commit acks everything up to
it, so the next consumer starts after it; what was not committed comes again
after a clean close and after a kill (the connection dropped without acks),
to the consumer standing by, first and in order; status; put; what a queue
cannot do refused with a reason. Then a real MinIO publishes bucket
notifications to the node (``notify_amqp``: a durable direct exchange,
persistent messages, publisher confirms, a ``queue_dir``) and a poller on a
``kind = "notifications"`` mapping reads them: one job per upload, none lost
while RabbitMQ is stopped. fileproc's source declares the queue and binds it
to MinIO's exchange (the URL's ``?exchange=...&routing_key=...``), so no
test binds anything by hand. The jobs' helpers are tests/test_notification_queues'.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kombu import Connection
from pydantic import ValidationError

from fileproc.errors import StreamError
from fileproc.mappings import StreamMapping
from fileproc.streams import admin
from fileproc.streams.amqp import AmqpSource
from fileproc.streams.engines import open_source
from fileproc.streams.filtering import compile_filters, record_document
from tests import test_notification_queues as queues
from tests.procs import wait_for
from tests.rabbitmq_server import RabbitMQ, rabbitmq_server
from tests.servers import MinioServer, minio_server
from tests.test_notification_queues import away_and_back, jobs, settled, upload

pytestmark = [pytest.mark.services, pytest.mark.timeout(120)]

broker = queues.broker  # (the Celery broker of the jobs' first steps, which consume's services use)
consume = queues.consume  # consume(minio, bucket, arn, source): a service and a poller of the bucket's mapping

TARGET = "fileproc"
ARN = f"arn:minio:sqs::{TARGET}:amqp"
EXCHANGE = "minio-events"
ROUTING_KEY = "bucketlogs"


@pytest.fixture(scope="module")
def rabbit() -> Iterator[RabbitMQ]:
    with rabbitmq_server() as server:
        yield server


def mapping(rabbit: RabbitMQ, queue: str = "", **settings: Any) -> StreamMapping:
    """A notifications mapping of ``queue`` (default: a fresh one) on the default virtual host."""
    queue = queue or f"q-{uuid.uuid4().hex[:8]}"
    return StreamMapping(name=queue, source=f"{rabbit.url}%2F/{queue}", kind="notifications", **settings)


@pytest.fixture
def sources() -> Iterator[list[AmqpSource]]:
    """Sources a test opens: closed at its end (a killed one's client side too)."""
    opened: list[AmqpSource] = []
    yield opened
    for source in opened:
        source.close()


def started(opened: list[AmqpSource], found: StreamMapping, consumer: str) -> AmqpSource:
    source = AmqpSource(found, consumer=consumer)
    opened.append(source)
    source.start(lambda partitions: None)
    return source


def take(source: AmqpSource, count: int, within: float = 10.0) -> list[int]:
    """The ``n`` of up to ``count`` records polled (each ``{"n": N}``), in the order given."""
    found: list[int] = []
    deadline = time.monotonic() + within
    while len(found) < count and time.monotonic() < deadline:
        found += [json.loads(record.data)["n"] for record in source.poll(count - len(found), 0.2)]
    return found


def numbered(count: int, start: int = 0) -> list[tuple[bytes | None, bytes]]:
    return [(None, json.dumps({"n": i}).encode()) for i in range(start, start + count)]


def kill(source: AmqpSource) -> None:
    """As a worker killed with SIGKILL: its socket closes under it; nothing acked, nothing closed cleanly."""
    assert source._conn is not None
    source._conn.connection.transport.sock.shutdown(socket.SHUT_RDWR)


def queue_state(rabbit: RabbitMQ, queue: str) -> tuple[int, int]:
    """(messages ready, consumers) of ``queue`` as RabbitMQ says; (0, 0) if there is no such queue."""
    with Connection(rabbit.url, connect_timeout=5) as conn:
        try:
            declared = conn.channel().queue_declare(queue, passive=True)
        except conn.channel_errors:
            return 0, 0
        return int(declared.message_count), int(declared.consumer_count)


# --- the engine ------------------------------------------------------------------------------


def test_records_come_in_order_and_a_new_consumer_resumes_after_the_commit(rabbit: RabbitMQ,
                                                                            sources: list[AmqpSource]) -> None:
    found = mapping(rabbit, batch_size=4)
    putter = AmqpSource(found, consumer="admin")
    sources.append(putter)
    put = putter.put(numbered(10))
    assert [p.partition for p in put] == ["0"] * 10 and [p.position for p in put] == [str(i) for i in range(1, 11)]

    first = started(sources, found, "first")
    records = first.poll(4, 2.0)
    assert [json.loads(r.data)["n"] for r in records] == [0, 1, 2, 3]
    assert [r.position for r in records] == ["1", "2", "3", "4"] and {r.partition for r in records} == {"0"}
    assert records[0].key is None and time.time() - records[0].timestamp < 60  # put's timestamp property
    first.commit("0", "3")  # 0..2 done; 3 and what was prefetched is not
    (status,) = first.status()
    assert (status.committed, status.newest, status.lag) == ("3", "10", 7)  # all 10 delivered (prefetched)
    first.close()  # RabbitMQ puts back what it had not acked, at the head

    second = started(sources, found, "second")
    assert take(second, 7) == [3, 4, 5, 6, 7, 8, 9]
    second.commit("0", "7")
    (status,) = putter.status()  # from outside: no positions, nothing waits
    assert (status.committed, status.newest, status.lag) == (None, None, 0)
    second.close()
    assert queue_state(rabbit, found.name) == (0, 0)  # everything acked


def test_a_killed_consumers_messages_go_to_the_standby_first_in_order(rabbit: RabbitMQ,
                                                                       sources: list[AmqpSource]) -> None:
    found = mapping(rabbit)
    holder = started(sources, found, "holder")
    standby = started(sources, found, "standby")  # single active consumer: RabbitMQ gives it nothing yet
    holder.put(numbered(10))
    assert take(holder, 4) == [0, 1, 2, 3]
    holder.commit("0", "2")  # 0 and 1 done; 2 and 3 in flight when it dies
    assert standby.poll(10, 0.3) == []  # never splits the queue with the holder
    kill(holder)

    assert take(standby, 8) == [2, 3, 4, 5, 6, 7, 8, 9]  # in flight first, in order, then the rest
    with pytest.raises(StreamError, match="cannot commit"):
        holder.commit("0", "4")  # the dead one's late commit acks nothing
    standby.commit("0", "8")
    assert queue_state(rabbit, found.name) == (0, 1)


def test_uncommitted_records_come_again_after_the_connection_is_lost(rabbit: RabbitMQ,
                                                                      sources: list[AmqpSource]) -> None:
    found = mapping(rabbit)
    revoked: list[list[str]] = []
    source = AmqpSource(found, consumer="one")
    sources.append(source)
    source.start(revoked.append)
    source.put(numbered(5))
    assert take(source, 3) == [0, 1, 2]
    source.commit("0", "1")
    kill(source)  # (as RabbitMQ going away would)
    with pytest.raises(StreamError, match=r"RabbitMQ at 127\.0\.0\.1"):
        source.poll(10, 0.2)
    assert take(source, 4) == [1, 2, 3, 4]  # it connects again; what it had not acked comes first
    assert revoked == [["0"]]  # the poller was told first: its batches in flight are void


def test_keys_filters_and_what_a_queue_cannot_do(rabbit: RabbitMQ, sources: list[AmqpSource]) -> None:
    found = mapping(rabbit)
    source = started(sources, found, "one")
    source.put([(b"device-7", b'{"temp": 21}'), (None, b'{"temp": 30}')])
    keyed, plain = source.poll(2, 2.0)
    assert (keyed.key, plain.key) == (b"device-7", None)  # put's key; none through the default exchange
    hot = compile_filters([{"data": {"temp": [{"numeric": [">", 25]}]}}])
    assert [hot.matches(record_document(r, found.engine)) for r in (keyed, plain)] == [False, True]
    with pytest.raises(StreamError, match="key is text"):
        source.put([(b"\xff", b"x")])
    with pytest.raises(StreamError, match="nothing to replay"):
        source.read("0", "1", "2")
    with pytest.raises(StreamError, match="reset it to latest"):
        source.reset("trim_horizon")
    source.close()

    source.put(numbered(3))  # (a new connection: put and reset need no consumer)
    assert queue_state(rabbit, found.name)[0] == 5  # the two never committed came back, and three more
    source.reset("latest")
    assert queue_state(rabbit, found.name)[0] == 0

    timed = AmqpSource(mapping(rabbit, starting_position="at_timestamp", starting_timestamp="2026-01-01T00:00:00Z"))
    with pytest.raises(StreamError, match="keeps no times"):
        timed.start(lambda partitions: None)

    plain_queue = f"plain-{uuid.uuid4().hex[:8]}"
    with Connection(rabbit.url) as conn:  # declared by someone else, without single active consumer
        conn.channel().queue_declare(plain_queue, durable=True, auto_delete=False)
    refused = AmqpSource(mapping(rabbit, plain_queue))
    sources.append(refused)
    with pytest.raises(StreamError, match="declared without x-single-active-consumer"):
        refused.start(lambda partitions: None)


def test_an_amqp_source_is_checked_when_the_config_is_read() -> None:
    ok = StreamMapping(name="n", kind="notifications",
                       source="amqps://u:p@mq.example:5671/prod/events?exchange=minio&routing_key=k")
    assert ok.engine == "amqp" and isinstance(open_source(ok), AmqpSource)
    source = AmqpSource(ok)
    assert (source.vhost, source.queue, source.exchange, source.exchange_type, source.routing_key) == (
        "prod", "events", "minio", "direct", "k")
    assert AmqpSource(StreamMapping(name="n", kind="notifications", source="amqp://h/events")).vhost == "/"
    for wrong in ("amqp://h/a/b/c", "amqp://h/", "amqp://h/q?exchnage=x"):
        with pytest.raises(ValidationError, match="amqp://USER:PASS@HOST:PORT/"):
            StreamMapping(name="n", kind="notifications", source=wrong)
    with pytest.raises(StreamError, match=r"RabbitMQ at 127\.0\.0\.1:1 unreachable: connection refused"):
        AmqpSource(StreamMapping(name="n", kind="notifications", source="amqp://127.0.0.1:1/q")).status()


# --- MinIO -> RabbitMQ (notify_amqp) ---------------------------------------------------------


@pytest.fixture(scope="module")
def minio(rabbit: RabbitMQ, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MinioServer]:
    """MinIO publishing bucket notifications to the module's RabbitMQ: a durable direct exchange, persistent
    messages, publisher confirms, and a queue_dir for what it could not publish yet."""
    with minio_server({
        f"MINIO_NOTIFY_AMQP_ENABLE_{TARGET}": "on",
        f"MINIO_NOTIFY_AMQP_URL_{TARGET}": rabbit.url,
        f"MINIO_NOTIFY_AMQP_EXCHANGE_{TARGET}": EXCHANGE,
        f"MINIO_NOTIFY_AMQP_EXCHANGE_TYPE_{TARGET}": "direct",
        f"MINIO_NOTIFY_AMQP_ROUTING_KEY_{TARGET}": ROUTING_KEY,
        f"MINIO_NOTIFY_AMQP_DURABLE_{TARGET}": "on",
        f"MINIO_NOTIFY_AMQP_DELIVERY_MODE_{TARGET}": "2",
        f"MINIO_NOTIFY_AMQP_PUBLISHING_CONFIRMS_{TARGET}": "on",
        f"MINIO_NOTIFY_AMQP_QUEUE_DIR_{TARGET}": str(tmp_path_factory.mktemp("minio-queues") / "amqp"),
    }) as server:
        yield server


def notifications(rabbit: RabbitMQ, queue: str) -> str:
    """The source of ``queue``, which fileproc declares and binds to MinIO's exchange."""
    return f"{rabbit.url}%2F/{queue}?exchange={EXCHANGE}&exchange_type=direct&routing_key={ROUTING_KEY}"


def consuming(rabbit: RabbitMQ, queue: str) -> None:
    """Wait until the poller declared and bound the queue and consumes it: MinIO's events go there from now on.

    (What MinIO publishes before any queue is bound to its exchange, RabbitMQ drops as unroutable.)
    """
    wait_for(lambda: queue_state(rabbit, queue)[1] == 1, timeout=15, what=f"a consumer of {queue}")


def test_uploads_minio_publishes_to_rabbitmq_become_one_job_each(consume: Any, minio: MinioServer,
                                                                   rabbit: RabbitMQ) -> None:
    service, poller = consume(minio, "amqp-in", ARN, notifications(rabbit, "amqp-in"))
    consuming(rabbit, "amqp-in")
    keys = ["a.txt", "photos/b c.jpg", "c+d.txt", "e.txt", "f.txt"]
    upload(minio, "amqp-in", keys)
    wait_for(lambda: jobs(service, "amqp-in") == sorted(keys), timeout=30, what="a job per upload")
    wait_for(lambda: settled(service, "amqp-in"), timeout=15, what="the events taken")

    poller.stop()  # closing gives back what was not acked: nothing is
    assert queue_state(rabbit, "amqp-in") == (0, 0)
    (partition,) = admin.status(service, "amqp-in")[0]["partitions"]  # (the poller's counts: saved as it stopped)
    assert partition["records"] == len(keys) and partition["last_error"] is None
    assert jobs(service, "amqp-in") == sorted(keys)  # each once, keys decoded as MinIO encoded them


def test_nothing_is_lost_while_rabbitmq_is_down(consume: Any, minio: MinioServer, rabbit: RabbitMQ) -> None:
    service, _ = consume(minio, "amqp-away", ARN, notifications(rabbit, "amqp-away"))
    consuming(rabbit, "amqp-away")
    away_and_back(service, minio, "amqp-away", rabbit.stop, rabbit.start)  # (same port and data: the queue stays)
