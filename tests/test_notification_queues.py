"""Bucket notifications through a queue: a real MinIO publishing to a real broker, read by a notifications mapping.

One MinIO serves the module's NATS and Redis tests, with a notification
target for each (``notify_nats`` with JetStream, ``notify_redis`` with
``format=access``); the Kafka tests have a MinIO of their own
(``notify_kafka``), so the others need no Kafka. Every target has a
``queue_dir``: MinIO keeps the events a broker could not take and publishes
them once it is back. Each test gives its own bucket a notification
configuration naming a target, starts a real poller on a ``kind =
"notifications"`` mapping of that broker, uploads objects to MinIO and looks
at the jobs fileproc recorded: one per upload, never two, none lost while
the broker was stopped. The Redis list engine's reliable-queue promises (a
killed consumer's entries taken by the next one, in order; one consumer at a
time) are tested on the engine itself, on the same Redis. (``notify_amqp``:
tests/test_streams_amqp.py, with RabbitMQ.)
"""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from minio import Minio
from minio.notificationconfig import NotificationConfig, QueueConfig

from fileproc.errors import StreamError
from fileproc.mappings import StreamMapping
from fileproc.service import Service
from fileproc.streams import admin, redis_lease
from fileproc.streams import redis_lists as engine
from fileproc.streams.poller import Poller
from fileproc.streams.redis_lists import RedisListSource
from tests.kafka_server import KafkaBroker, kafka_server
from tests.nats_server import NatsServer, nats_server
from tests.procs import wait_for, write_config
from tests.servers import REDIS_PASSWORD, MinioServer, minio_server, redis_server
from tests.test_lambda import service_for

pytestmark = [pytest.mark.services, pytest.mark.timeout(120)]

TARGET = "fileproc"
"""The id of MinIO's notification targets (one per broker kind)."""
SUBJECT = "minio.events"
REDIS_KEY = f"minio-events-{uuid.uuid4().hex[:8]}"  # (the session's Redis is shared with other modules)
ARN_NATS = f"arn:minio:sqs::{TARGET}:nats"
ARN_REDIS = f"arn:minio:sqs::{TARGET}:redis"
ARN_KAFKA = f"arn:minio:sqs::{TARGET}:kafka"
KAFKA_TOPIC = "minio-events"
MINIO_RETRY = 3.0
"""Seconds between MinIO's attempts to publish what its queue_dir holds (also its delay before the first)."""


@pytest.fixture(scope="module")
def nats() -> Iterator[NatsServer]:
    with nats_server() as server:
        yield server


@pytest.fixture(scope="module")
def minio(nats: NatsServer, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MinioServer]:
    """MinIO publishing bucket notifications to the module's nats-server and the session's Redis."""
    queues = tmp_path_factory.mktemp("minio-queues")
    redis_address = redis_url.rsplit("@", 1)[1].split("/")[0]
    env = {
        f"MINIO_NOTIFY_NATS_ENABLE_{TARGET}": "on",
        f"MINIO_NOTIFY_NATS_ADDRESS_{TARGET}": f"127.0.0.1:{nats.port}",
        f"MINIO_NOTIFY_NATS_SUBJECT_{TARGET}": SUBJECT,
        f"MINIO_NOTIFY_NATS_JETSTREAM_{TARGET}": "on",
        f"MINIO_NOTIFY_NATS_QUEUE_DIR_{TARGET}": str(queues / "nats"),
        f"MINIO_NOTIFY_REDIS_ENABLE_{TARGET}": "on",
        f"MINIO_NOTIFY_REDIS_ADDRESS_{TARGET}": redis_address,
        f"MINIO_NOTIFY_REDIS_PASSWORD_{TARGET}": REDIS_PASSWORD,
        f"MINIO_NOTIFY_REDIS_KEY_{TARGET}": REDIS_KEY,
        f"MINIO_NOTIFY_REDIS_FORMAT_{TARGET}": "access",
        f"MINIO_NOTIFY_REDIS_QUEUE_DIR_{TARGET}": str(queues / "redis"),
    }
    with minio_server(env) as server:
        yield server


@pytest.fixture(scope="module")
def broker() -> Iterator[str]:
    """A Redis of the module's own as Celery's broker: the step messages of its jobs go there, and die with it."""
    with redis_server() as url:
        yield url


@pytest.fixture
def consume(tmp_path: Path, broker: str) -> Iterator[Callable[..., tuple[Service, Poller]]]:
    """``consume(minio, bucket, arn, source)``: the bucket notifies the target, and a poller reads ``source``.

    The service stores on that MinIO and has one pipeline, of ``bucket``; the
    poller is started before the bucket notifies anything (so a NATS
    mapping's JetStream stream exists before MinIO publishes).
    """
    pollers: list[Poller] = []

    def start(minio: MinioServer, bucket: str, arn: str, source: str) -> tuple[Service, Poller]:
        config = write_config(tmp_path / "fileproc.toml", {
            "data_dir": str(tmp_path / "data"), "database": {"url": f"sqlite:///{tmp_path / 'state.db'}"},
            "watcher": {"enabled": False},
            "broker": {"url": broker},  # where the jobs' first steps go (no worker takes them here)
            "storage": {"backend": "s3", "endpoint": minio.endpoint, "access_key": minio.access_key,
                        "secret_key": minio.secret_key, "secure": False},
            "pipelines": [{"name": bucket, "match": {"bucket": bucket}, "steps": [{"function": "probe"}],
                           "output": {"bucket": "out", "key": "{key}/{name}"}}],
            "streams": [{"name": bucket, "source": source, "kind": "notifications"}]})
        service = service_for(config)
        poller = Poller(service, admin.mapping(service, bucket), worker="test").start()
        pollers.append(poller)
        client = store(minio)
        client.make_bucket(bucket)
        client.set_bucket_notification(bucket, NotificationConfig(queue_config_list=[
            QueueConfig(events=["s3:ObjectCreated:*"], queue=arn)]))
        return service, poller

    yield start
    for poller in pollers:
        poller.stop()


def store(minio: MinioServer) -> Minio:
    return Minio(minio.endpoint, minio.access_key, minio.secret_key, secure=False)


def upload(minio: MinioServer, bucket: str, keys: list[str]) -> None:
    client = store(minio)
    for key in keys:
        data = f"content of {key}".encode()
        client.put_object(bucket, key, io.BytesIO(data), len(data))


def jobs(service: Service, bucket: str) -> list[str]:
    """The keys of the jobs recorded for ``bucket``'s pipeline, sorted (a key twice: two jobs)."""
    return sorted(job.key for job in service.db.list_jobs(pipeline=bucket, limit=1000))


def settled(service: Service, name: str) -> bool:
    """The mapping has nothing left to take or commit, on any partition."""
    partitions = admin.status(service, name)[0]["partitions"]
    return bool(partitions) and all(p["lag_records"] == 0 for p in partitions)


# --- MinIO -> NATS JetStream ------------------------------------------------------------


def test_uploads_minio_publishes_to_nats_jetstream_become_one_job_each(consume: Any, minio: MinioServer,
                                                                        nats: NatsServer) -> None:
    service, _ = consume(minio, "nats-in", ARN_NATS, f"{nats.url}/{SUBJECT}")
    keys = ["a.txt", "photos/b c.jpg", "c+d.txt", "e.txt"]
    upload(minio, "nats-in", keys)
    wait_for(lambda: jobs(service, "nats-in") == sorted(keys), timeout=30, what="a job per upload")
    wait_for(lambda: settled(service, "nats-in"), timeout=15, what="the events committed")
    assert jobs(service, "nats-in") == sorted(keys)  # each once, keys decoded as MinIO encoded them


def test_nothing_is_lost_while_nats_is_down(consume: Any, minio: MinioServer, nats: NatsServer) -> None:
    service, _ = consume(minio, "nats-away", ARN_NATS, f"{nats.url}/{SUBJECT}")
    away_and_back(service, minio, "nats-away", nats.stop, nats.start)  # (same port and store: the stream stays)


def away_and_back(service: Service, minio: MinioServer, bucket: str, stop: Callable[[], None],
                  start: Callable[[], None]) -> None:
    """Uploads before, while and after the broker is stopped: each becomes one job, none is lost."""
    upload(minio, bucket, ["before.txt"])
    wait_for(lambda: jobs(service, bucket) == ["before.txt"], timeout=30, what="the first upload's job")
    stop()
    try:
        away = [f"while-away-{i}.txt" for i in range(5)]
        upload(minio, bucket, away)  # MinIO keeps their events in its queue_dir...
        time.sleep(MINIO_RETRY + 1)  # ...and fails to publish them at least once
        assert jobs(service, bucket) == ["before.txt"]
    finally:
        start()
    upload(minio, bucket, ["after.txt"])
    everything = sorted(["before.txt", *away, "after.txt"])
    wait_for(lambda: jobs(service, bucket) == everything, timeout=45,
             what="the events published while the broker was away")
    wait_for(lambda: settled(service, bucket), timeout=15, what="the events committed")
    assert jobs(service, bucket) == everything


# --- MinIO -> a Redis list (notify_redis, format=access) ---------------------------------


def test_uploads_minio_pushes_to_a_redis_list_become_one_job_each(consume: Any, minio: MinioServer,
                                                                  redis_url: str) -> None:
    source = f"{redis_url.replace('redis://', 'redis-list://', 1)}/{REDIS_KEY}"
    service, poller = consume(minio, "redis-in", ARN_REDIS, source)
    keys = ["a.txt", "docs/b c.pdf", "c.txt"]
    upload(minio, "redis-in", keys)
    wait_for(lambda: jobs(service, "redis-in") == sorted(keys), timeout=30, what="a job per upload")
    wait_for(lambda: settled(service, "redis-in"), timeout=15, what="the list emptied")
    client = redis.Redis.from_url(redis_url)
    assert client.llen(REDIS_KEY) == 0 and client.llen(REDIS_KEY + engine.PROCESSING) == 0
    (partition,) = admin.status(service, "redis-in")[0]["partitions"]
    assert partition["committed"] == partition["newest"] == "3" and partition["last_error"] is None

    poller.stop()  # a restarted worker finds nothing left to do: nothing is submitted twice
    again = Poller(service, admin.mapping(service, "redis-in"), worker="test-2").start()
    try:
        upload(minio, "redis-in", ["d.txt"])
        wait_for(lambda: jobs(service, "redis-in") == sorted([*keys, "d.txt"]), timeout=30, what="the new upload")
    finally:
        again.stop()


# --- MinIO -> Kafka ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def kafka() -> Iterator[KafkaBroker]:
    with kafka_server() as broker:
        yield broker


@pytest.fixture(scope="module")
def kafka_minio(kafka: KafkaBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MinioServer]:
    """A MinIO of its own publishing to the Kafka broker (the module's other tests need no Kafka)."""
    kafka.create_topic(KAFKA_TOPIC, partitions=2)  # MinIO keys each event by BUCKET/KEY: both partitions used
    with minio_server({
        f"MINIO_NOTIFY_KAFKA_ENABLE_{TARGET}": "on",
        f"MINIO_NOTIFY_KAFKA_BROKERS_{TARGET}": kafka.bootstrap,
        f"MINIO_NOTIFY_KAFKA_TOPIC_{TARGET}": KAFKA_TOPIC,
        f"MINIO_NOTIFY_KAFKA_QUEUE_DIR_{TARGET}": str(tmp_path_factory.mktemp("minio-queues") / "kafka"),
    }) as server:
        yield server


def test_uploads_minio_publishes_to_kafka_become_one_job_each(consume: Any, kafka_minio: MinioServer,
                                                              kafka: KafkaBroker) -> None:
    service, _ = consume(kafka_minio, "kafka-in", ARN_KAFKA, f"kafka://{kafka.bootstrap}/{KAFKA_TOPIC}")
    keys = [f"k{i}.txt" for i in range(6)] + ["sub/with space.txt"]
    upload(kafka_minio, "kafka-in", keys)
    wait_for(lambda: jobs(service, "kafka-in") == sorted(keys), timeout=30, what="a job per upload")
    wait_for(lambda: settled(service, "kafka-in"), timeout=15, what="the events committed")
    assert jobs(service, "kafka-in") == sorted(keys)


def test_nothing_is_lost_while_kafka_is_down(consume: Any, kafka_minio: MinioServer, kafka: KafkaBroker) -> None:
    service, _ = consume(kafka_minio, "kafka-away", ARN_KAFKA, f"kafka://{kafka.bootstrap}/{KAFKA_TOPIC}")
    away_and_back(service, kafka_minio, "kafka-away", kafka.stop, kafka.start)


# --- the Redis list engine: a reliable queue ---------------------------------------------


@pytest.fixture
def quick_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    """A lease of 0.6 s: a killed consumer's list is taken over in about a second."""
    monkeypatch.setattr(redis_lease, "LEASE_MS", 600)


def list_mapping(redis_url: str, key: str, **settings: Any) -> StreamMapping:
    return StreamMapping(name=key, source=f"{redis_url.replace('redis://', 'redis-list://', 1)}/{key}",
                         kind="notifications", **settings)


def take(source: RedisListSource, count: int, within: float = 10.0) -> list[bytes]:
    found: list[bytes] = []
    deadline = time.monotonic() + within
    while len(found) < count and time.monotonic() < deadline:
        found += [record.data for record in source.poll(count - len(found), 0.2)]
    return found


def test_a_killed_consumers_entries_go_to_the_next_one_first_in_order(redis_url: str, quick_lease: None) -> None:
    key = f"q-{uuid.uuid4().hex[:8]}"
    mapping = list_mapping(redis_url, key)
    client = redis.Redis.from_url(redis_url)
    client.rpush(key, *[json.dumps({"n": i}).encode() for i in range(10)])

    first = RedisListSource(mapping, consumer="first")
    first.start(lambda partitions: None)
    given = take(first, 4)
    assert [json.loads(d)["n"] for d in given] == [0, 1, 2, 3]
    first.commit("0", "2")  # 0 and 1 done; 2 and 3 in flight when it dies
    first.lease._stop.set()  # killed: its lease is no longer renewed, nothing is released
    assert first.lease._renewer is not None
    first.lease._renewer.join()

    second = RedisListSource(mapping, consumer="second")
    second.start(lambda partitions: None)
    try:
        rest = take(second, 8)
        assert [json.loads(d)["n"] for d in rest] == [2, 3, 4, 5, 6, 7, 8, 9]  # in flight first, in order
        with pytest.raises(StreamError, match="another consumer holds"):
            first.commit("0", "4")  # the dead one's late commit removes nothing
        (status,) = second.status()
        assert status.lag == 8
        second.commit("0", status.newest or "")
        (status,) = second.status()
        assert status.lag == 0 and status.committed == status.newest
        assert client.llen(key) == 0 and client.llen(key + engine.PROCESSING) == 0
    finally:
        second.close()
        first.client.close()


def test_a_second_consumer_waits_while_the_first_holds_the_list(redis_url: str) -> None:
    key = f"q-{uuid.uuid4().hex[:8]}"
    mapping = list_mapping(redis_url, key)
    holder, standby = RedisListSource(mapping, consumer="a"), RedisListSource(mapping, consumer="b")
    for source in (holder, standby):
        source.start(lambda partitions: None)
    try:
        put = holder.put([(None, b"one"), (None, b"two")])
        assert [p.position for p in put] == ["1", "2"]
        assert take(holder, 1) == [b"one"]
        assert standby.poll(10, 0.2) == []  # never splits the list with the holder
        holder.commit("0", "1")
        holder.close()  # gives the lease up at once
        assert take(standby, 1) == [b"two"]
    finally:
        standby.close()


def test_a_redis_list_source_refuses_what_a_list_cannot_do(redis_url: str) -> None:
    key = f"q-{uuid.uuid4().hex[:8]}"
    redis.Redis.from_url(redis_url).xadd(key, {"data": b"x"})
    source = RedisListSource(list_mapping(redis_url, key), consumer="a")
    try:
        with pytest.raises(StreamError, match="is a Redis stream, not a list: use redis://"):
            source.start(lambda partitions: None)
        with pytest.raises(StreamError, match="keeps no keys"):
            source.put([(b"k", b"v")])
        timed = RedisListSource(list_mapping(redis_url, key, starting_position="at_timestamp",
                                             starting_timestamp="2026-01-01T00:00:00Z"))
        with pytest.raises(StreamError, match="keeps no times"):
            timed.start(lambda partitions: None)
        timed.close()
    finally:
        source.close()
