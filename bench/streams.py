"""Records/s and end-to-end latency of a stream mapping, against a plain consumer loop on the same stream engine.

The handler is a deployed Lambda handler that sums a JSON field of a Kinesis
batch (``def handler(event, context)``). On the embedded default's Redis
(a real ``redis-server`` started as ``fileproc serve`` starts it):

- throughput: N records put ahead, then consumed in batches of 100, to the
  last commit; fileproc's poller (warm runner, metering, the invocation
  recorded, commit after success) against the minimal loop a user would
  write with the same client (redis-py: ``XREADGROUP`` 100, build the
  Kinesis event, call the handler in-process, ``XACK``);
- latency: a record put every 20 ms with ``batch_window = 0``; the handler
  returns how long ago its record was put (produced -> handler started),
  p50 and p99;
- ``POST /streams/NAME/records``-equivalent ingest: records/s through
  :func:`fileproc.streams.admin.put` in batches of 500.

With ``FILEPROC_KAFKA_LIBS`` set (``.ci/kafka.sh``), the same on a real
Kafka broker against a plain confluent-kafka consumer loop.

    python -m bench.streams [--records 50000] [--latency 200]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import importlib.util
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
from click.testing import CliRunner

from fileproc.app import build
from fileproc.broker import EmbeddedBroker
from fileproc.cli import cli
from fileproc.config import load_settings
from fileproc.runtime.app import broker_url, embedded_socket
from fileproc.runtime.pool import pool
from fileproc.streams import admin
from fileproc.streams.poller import Poller
from fileproc.streams.redis_streams import STREAM_PREFIX, _redis_py_url

HANDLER = '''
import base64, json, time

def handler(event, context):
    records = event["Records"]
    total = sum(json.loads(base64.b64decode(r["kinesis"]["data"]))["v"] for r in records)
    sent = json.loads(base64.b64decode(records[0]["kinesis"]["data"])).get("sent") if records else None
    return {"sum": total, "waited": time.time() - sent if sent else None}
'''


def plain_loop(client: Any, key: str, records: int, handler: Any) -> float:
    """The minimal consumer a user writes: read 100, call the handler, acknowledge; seconds for ``records``."""
    with contextlib.suppress(redis.ResponseError):
        client.xgroup_create(key, "plain", id="0")
    done = 0
    start = time.perf_counter()
    while done < records:
        found = client.xreadgroup("plain", "me", {key: ">"}, count=100, block=1000)
        if not found:
            continue
        entries = found[0][1]
        event = {"Records": [{"kinesis": {"data": base64.b64encode(fields[b"data"]).decode(),
                                          "sequenceNumber": entry_id.decode()}} for entry_id, fields in entries]}
        handler(event, None)
        client.xack(key, "plain", *[entry_id for entry_id, _ in entries])
        done += len(entries)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--latency", type=int, default=200, help="records put one by one for the latency figure")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        code = root / "summer"
        code.mkdir()
        (code / "app.py").write_text(HANDLER)
        config = root / "fileproc.toml"
        config.write_text(f'data_dir = "{root / "data"}"\npipelines = []\n'
                          '[[streams]]\nname = "bench"\nsource = "embedded:bench"\nfunction = "summer"\n')
        deployed = CliRunner().invoke(cli, ["--config", str(config), "functions", "deploy", str(code),
                                            "--name", "summer", "--handler", "app.handler"])
        assert deployed.exit_code == 0, deployed.output
        settings = load_settings(config, env={})
        broker = EmbeddedBroker(settings.data_dir / "broker", embedded_socket(settings))  # as `fileproc serve`
        broker.start()
        try:
            run(settings, code / "app.py", args)
        finally:
            pool().close()
            broker.stop()


def _handler(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location("summer_app", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.handler


def run(settings: Any, handler_file: Path, args: argparse.Namespace) -> None:
    service = build(settings)
    client = redis.Redis.from_url(_redis_py_url(broker_url(settings)))
    payloads = [(None, json.dumps({"v": i}).encode()) for i in range(args.records)]

    start = time.perf_counter()  # ingest, as POST /streams/NAME/records does it: batches of 500
    for i in range(0, len(payloads), 500):
        admin.put(service, "bench", payloads[i:i + 500])
    ingest = len(payloads) / (time.perf_counter() - start)

    with client.pipeline(transaction=False) as pipe:  # the plain loop's own copy of the records
        for _, data in payloads:
            pipe.xadd(STREAM_PREFIX + "plain", {"data": data})
        pipe.execute()
    plain = plain_loop(client, STREAM_PREFIX + "plain", args.records, _handler(handler_file))

    poller = Poller(service, admin.mapping(service, "bench"), worker="bench", embedded_url=broker_url(settings))
    start = time.perf_counter()
    poller.start()
    newest = client.xrevrange(STREAM_PREFIX + "bench", count=1)[0][0]
    while not _caught_up(client, STREAM_PREFIX + "bench", "fileproc-bench", newest):
        time.sleep(0.005)
    ours = time.perf_counter() - start

    for i in range(args.latency):  # latency: one record at a time, batch_window 0
        admin.put(service, "bench", [(None, json.dumps({"v": i, "sent": time.time()}).encode())])
        time.sleep(0.02)
    time.sleep(1.0)
    poller.stop()
    waited = sorted(job.attempts[0].result["waited"] * 1000
                    for job in service.db.list_jobs(bucket="stream:bench", limit=args.latency + 50)
                    if job.attempts and (job.attempts[0].result or {}).get("waited") is not None)
    print(f"{'':44}{'records/s':>12}")
    print(f"{'plain redis-py loop, handler in-process':44}{args.records / plain:>12,.0f}")
    print(f"{'fileproc poller, deployed handler':44}{args.records / ours:>12,.0f}")
    print(f"ratio fileproc / plain: {plain / ours:.2f}")
    print(f"ingest (admin.put, batches of 500): {ingest:,.0f} records/s")
    if waited:
        print(f"put -> handler started: p50 {statistics.median(waited):.1f} ms, "
              f"p99 {waited[min(len(waited) - 1, int(len(waited) * .99))]:.1f} ms ({len(waited)} records)")


def _caught_up(client: Any, key: str, group: str, newest: bytes) -> bool:
    """Every record up to ``newest`` delivered and acknowledged (cheap: two small commands)."""
    found = {g["name"]: g for g in client.xinfo_groups(key)}.get(group.encode())
    return bool(found) and found["last-delivered-id"] == newest and not found["pending"]


if __name__ == "__main__":
    main()
