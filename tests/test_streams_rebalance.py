"""Kafka workers joining and leaving mid-stream (rebalances) lose nothing and repeat at most the batches in flight.

Real `fileproc worker` processes share a real Kafka topic's three
partitions through one consumer group: a second worker joins while the
first is busy (the group gives it partitions), then stops (they go back).
Before a partition is given up, the worker ends the batches it is running
and commits them: the failure users report most of other Kafka triggers is
offsets committed before the work ended (records lost) or after the
partition moved (records run twice).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fileproc.state import Database
from fileproc.streams import admin
from tests.procs import Process, wait_for, write_config
from tests.test_lambda import deploy, service_for

HANDLER = '''
import base64, json, time

def handler(event, context):
    values = [json.loads(base64.b64decode(r["value"])) for rs in event["records"].values() for r in rs]
    time.sleep(0.3)
    return {"values": values}
'''

RECORDS, KEYS, BATCH = 600, 6, 10


@pytest.fixture(scope="module")
def kafka() -> Iterator[Any]:
    from tests.kafka_server import kafka_server

    with kafka_server(partitions=3) as broker:
        yield broker


def workers(db: Database) -> set[str]:
    return {job.attempts[0].worker for job in db.list_jobs(bucket="stream:orders", limit=10_000) if job.attempts}


def ran(db: Database) -> list[dict[str, Any]]:
    jobs = sorted(db.list_jobs(bucket="stream:orders", status="succeeded", limit=10_000), key=lambda j: j.id)
    return [v for job in jobs for v in job.attempts[0].result["values"]]


def test_a_worker_joining_then_leaving_mid_stream_loses_nothing(tmp_path: Path, kafka: Any, redis_url: str) -> None:
    kafka.create_topic("orders", partitions=3)
    code = tmp_path / "code"
    code.mkdir()
    (code / "app.py").write_text(HANDLER)
    host = redis_url.rsplit("/", 1)[0]
    config = write_config(tmp_path / "fileproc.toml", {
        "data_dir": str(tmp_path / "data"), "functions": {"alias_seconds": 0}, "pipelines": [],
        "broker": {"url": f"{host}/4"},
        "streams": [{"name": "orders", "source": f"kafka://{kafka.bootstrap}/orders", "function": "slow",
                     "batch_size": BATCH}]})
    deploy(config, code, "slow", "app.handler")
    service = service_for(config)
    keys = [f"k{i % KEYS}" for i in range(RECORDS)]
    admin.put(service, "orders", [(key.encode(), json.dumps({"key": key, "i": i // KEYS}).encode())
                                  for i, key in enumerate(keys)])
    db = service.db
    args = ["worker", "--streams", "orders", "--concurrency", "1"]
    first = Process(config, args, tmp_path / "first.log")
    second = None
    try:
        wait_for(lambda: len(ran(db)) >= RECORDS // 6, timeout=90, log=first)
        second = Process(config, args, tmp_path / "second.log")  # joins: the group gives it partitions
        wait_for(lambda: len(workers(db)) == 2 and len(ran(db)) >= RECORDS // 2, timeout=90,
                 log=second)  # (it ran batches of its own: the second worker's share, not only a join)
        assert second.stop() == 0, second.tail()  # leaves mid-stream: its partitions go back to the first
        wait_for(lambda: len({json.dumps(v, sort_keys=True) for v in ran(db)}) >= RECORDS, timeout=120, log=first)
    finally:
        first.stop()
        if second is not None:
            second.stop()
    seen = ran(db)
    assert len({json.dumps(v, sort_keys=True) for v in seen}) == RECORDS  # nothing lost
    assert len(seen) - RECORDS <= 2 * BATCH, f"{len(seen) - RECORDS} records ran twice"
    assert len(workers(db)) == 2  # both really consumed
    for key in range(KEYS):
        order = [v["i"] for v in seen if v["key"] == f"k{key}"]
        assert list(dict.fromkeys(order)) == list(range(RECORDS // KEYS)), f"k{key} out of order"
