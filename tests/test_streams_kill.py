"""A worker killed mid-batch (kill -9) loses no record of a stream, and repeats only what was in flight.

Real `fileproc worker` processes consume a real Redis stream into a
deployed handler that takes a while per batch; the first worker's whole
process group is killed while batches run, a second one takes the stream
over (once the first one's lease ran out) and finishes it. What each batch
ran is read from the invocations the workers recorded.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from fileproc.state import Database
from tests.procs import Process, wait_for, write_config
from tests.test_lambda import deploy, service_for
from tests.test_streams import put

HANDLER = '''
import base64, json, time

def handler(event, context):
    values = [json.loads(base64.b64decode(r["kinesis"]["data"])) for r in event["Records"]]
    time.sleep(0.05)
    return {"values": values}
'''

RECORDS, KEYS, BATCH = 400, 4, 10


def ran(db: Database, name: str) -> list[list[dict[str, Any]]]:
    """Each recorded batch's values, in the order they were recorded."""
    jobs = sorted(db.list_jobs(bucket=f"stream:{name}", status="succeeded", limit=10_000), key=lambda j: j.id)
    return [job.attempts[0].result["values"] for job in jobs]


def test_a_worker_killed_mid_batch_loses_nothing_and_repeats_only_the_batch_in_flight(
        tmp_path: Path, redis_url: str) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "app.py").write_text(HANDLER)
    name = "orders"
    host = redis_url.rsplit("/", 1)[0]
    config = write_config(tmp_path / "fileproc.toml", {
        "data_dir": str(tmp_path / "data"), "functions": {"alias_seconds": 0}, "pipelines": [],
        "broker": {"url": f"{host}/3"},
        "streams": [{"name": name, "source": f"{host}/0/{tmp_path.name}-{name}", "function": "slow",
                     "batch_size": BATCH}]})
    deploy(config, code, "slow", "app.handler")
    service = service_for(config)
    counters: dict[str, int] = defaultdict(int)
    values = []
    for i in range(RECORDS):
        key = f"k{i % KEYS}"
        values.append(({"key": key, "i": counters[key]}, key))
        counters[key] += 1
    for value, key in values:
        put(service, name, [value], key=key)
    db = service.db

    first = Process(config, ["worker", "--streams", name, "--concurrency", "1"], tmp_path / "first.log")
    try:
        wait_for(lambda: sum(len(b) for b in ran(db, name)) >= RECORDS // 4, timeout=60, log=first)
    finally:
        first.kill_group()  # kill -9: the worker, its pool, its runners, mid-batch
    before = sum(len(b) for b in ran(db, name))
    assert before < RECORDS, "the first worker finished everything before it was killed: nothing was tested"

    second = Process(config, ["worker", "--streams", name, "--concurrency", "1"], tmp_path / "second.log")
    try:
        wait_for(lambda: {json.dumps(v, sort_keys=True) for b in ran(db, name) for v in b}
                 >= {json.dumps(v, sort_keys=True) for v, _ in values}, timeout=90, log=second)
    finally:
        second.stop()

    batches = ran(db, name)
    seen = [v for batch in batches for v in batch]
    assert len({json.dumps(v, sort_keys=True) for v in seen}) == RECORDS  # every record ran
    repeated = len(seen) - RECORDS
    assert 0 <= repeated <= BATCH, f"{repeated} records ran twice: more than the one batch in flight"
    # Each key's records ran in order; a repeat starts over from where the last commit left it.
    for key in counters:
        order = [v["i"] for v in seen if v["key"] == key]
        firsts = list(dict.fromkeys(order))
        assert firsts == list(range(counters[key])), f"{key}: out of order: {order}"
