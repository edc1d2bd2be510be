"""A stream mapping end to end on each engine: NATS JetStream and Kafka, through the real poller and a deployed handler.

The engines' own contracts (order, commits, rebalances, restarts) are
tested in test_streams_nats.py and test_streams_kafka.py; here, what a user
sees: the event shape Lambda gives for that engine, every record once, each
key in order.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fileproc.service import Service
from fileproc.streams import admin
from fileproc.streams.poller import Poller
from tests.nats_server import NatsServer, nats_server
from tests.procs import wait_for, write_config
from tests.test_lambda import deploy, service_for

HANDLER = '''
import base64, json

def kinesis(event, context):
    return {"event": event, "values": [json.loads(base64.b64decode(r["kinesis"]["data"])) for r in event["Records"]]}

def kafka(event, context):
    values = [json.loads(base64.b64decode(r["value"])) for rs in event["records"].values() for r in rs]
    return {"event": event, "values": values}
'''


@pytest.fixture(scope="module")
def nats() -> Iterator[NatsServer]:
    with nats_server() as server:
        yield server


def mapped(tmp_path: Path, source: str, handler: str, **settings: Any) -> Service:
    code = tmp_path / "code"
    code.mkdir(exist_ok=True)
    (code / "app.py").write_text(HANDLER)
    config = write_config(tmp_path / "fileproc.toml", {
        "data_dir": str(tmp_path / "data"), "functions": {"alias_seconds": 0}, "pipelines": [],
        "streams": [{"name": "s", "source": source, "function": handler, **settings}]})
    deploy(config, code, handler, f"app.{handler}")
    return service_for(config)


def results(service: Service) -> list[dict[str, Any]]:
    jobs = sorted(service.db.list_jobs(bucket="stream:s", status="succeeded", limit=10_000), key=lambda j: j.id)
    return [job.attempts[0].result for job in jobs]


def consume(service: Service, count: int) -> list[dict[str, Any]]:
    poller = Poller(service, admin.mapping(service, "s"), worker="test").start()
    try:
        wait_for(lambda: sum(len(r["values"]) for r in results(service)) >= count, timeout=60)
    finally:
        poller.stop()
    return results(service)


def test_nats_records_reach_a_kinesis_handler_each_once_and_each_subject_in_order(
        tmp_path: Path, nats: NatsServer) -> None:
    service = mapped(tmp_path, f"{nats.url}/orders.*", "kinesis", batch_size=7)
    records = [(f"shop{i % 3}".encode(), json.dumps({"shop": i % 3, "n": i}).encode()) for i in range(60)]
    admin.put(service, "s", records)  # the key picks the subject: orders.shop0, orders.shop1 ...
    found = consume(service, 60)
    values = [v for r in found for v in r["values"]]
    assert sorted(v["n"] for v in values) == list(range(60))
    for shop in range(3):
        assert [v["n"] for v in values if v["shop"] == shop] == list(range(shop, 60, 3))
    record = found[0]["event"]["Records"][0]
    assert record["eventSource"] == "aws:kinesis" and record["eventSourceARN"].endswith(":stream/orders.*")
    assert record["kinesis"]["partitionKey"] in {"shop0", "shop1", "shop2"}
    assert int(record["kinesis"]["sequenceNumber"]) >= 1
    (status,) = admin.status(service)
    engine = [p for p in status["partitions"] if p["newest"] is not None]  # (the others: counts per subject)
    assert engine and all(p["lag_records"] == 0 for p in engine)
    assert sum(p["records"] for p in status["partitions"]) == 60


@pytest.fixture(scope="module")
def kafka() -> Iterator[Any]:
    from tests.kafka_server import kafka_server

    with kafka_server(partitions=3) as broker:
        yield broker


def test_kafka_records_reach_a_self_managed_kafka_handler_each_once_and_each_key_in_order(
        tmp_path: Path, kafka: Any) -> None:
    kafka.create_topic("clicks", partitions=3)
    service = mapped(tmp_path, f"kafka://{kafka.bootstrap}/clicks", "kafka", batch_size=10)
    admin.put(service, "s", [(f"user{i % 5}".encode(), json.dumps({"user": i % 5, "n": i}).encode())
                             for i in range(90)])
    found = consume(service, 90)
    values = [v for r in found for v in r["values"]]
    assert sorted(v["n"] for v in values) == list(range(90))
    for user in range(5):
        assert [v["n"] for v in values if v["user"] == user] == list(range(user, 90, 5))
    event = found[0]["event"]
    assert event["eventSource"] == "SelfManagedKafka" and event["bootstrapServers"] == kafka.bootstrap
    (topic_partition, records), = event["records"].items()
    assert topic_partition.startswith("clicks-")
    first = records[0]
    assert first["topic"] == "clicks" and isinstance(first["offset"], int) and first["timestampType"] == "CREATE_TIME"
    assert base64.b64decode(first["key"]).startswith(b"user") and first["headers"] == []
    (status,) = admin.status(service)
    assert [p["lag_records"] for p in status["partitions"] if p["newest"] is not None] == [0, 0, 0]
