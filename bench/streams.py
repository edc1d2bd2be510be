"""Records/s and latency of stream mappings, against a plain consumer loop on the same engine and client.

The handler is a deployed Lambda handler that sums a JSON field of its batch
(Kinesis' event, or self-managed Kafka's). Each part runs fileproc's poller
(warm runner, metering, the invocation recorded, commit after success) and
the minimal loop a user would write with the same client library (read 100,
build the event, call the same handler in-process, commit), on the same
records, one after the other:

- ``embedded``: the embedded default's Redis (a real ``redis-server``, started
  as ``fileproc serve`` starts it), redis-py, ``--pairs`` rounds of both loops
  on new records, each loop timed from its first batch (fileproc's from its
  first commit: its runner started) and the median ratio; also records/s put
  in batches of 500 (``fileproc.streams.admin.put``, what the API does);
- ``kafka``: a real Kafka broker (``FILEPROC_KAFKA_LIBS``, see .ci/kafka.sh),
  one partition, confluent-kafka;
- ``latency`` (both engines): a record put every 20 ms with ``batch_window =
  0``; the handler returns how long ago its record was put (put -> handler
  started), p50 and p99;
- ``http``: ``POST /streams/NAME/records`` on a real ``fileproc serve``
  (embedded default), batches of 500, records/s accepted;
- ``memory``: the poller process's RSS (and its runners') while three
  embedded streams are consumed, sampled every ``--records`` records.

    python -m bench.streams [--records 50000] [--pairs 3] [--latency 200] [--parts embedded,kafka,http]
    python -m bench.streams --parts memory --records 1000000 --rounds 10    # 10 million records
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import importlib.util
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import redis
from click.testing import CliRunner

from fileproc.app import build
from fileproc.broker import EmbeddedBroker
from fileproc.cli import cli
from fileproc.config import load_settings
from fileproc.runtime.app import broker_url, embedded_socket
from fileproc.runtime.pool import pool
from fileproc.service import Service
from fileproc.streams import admin
from fileproc.streams.poller import Poller
from fileproc.streams.redis_lease import redis_py_url
from fileproc.streams.redis_streams import STREAM_PREFIX

HANDLERS = '''
import base64, json, time

def _summed(values):
    sent = values[0].get("sent") if values else None
    return {"sum": sum(v["v"] for v in values), "waited": time.time() - sent if sent else None}

def kinesis(event, context):
    return _summed([json.loads(base64.b64decode(r["kinesis"]["data"])) for r in event["Records"]])

def kafka(event, context):
    return _summed([json.loads(base64.b64decode(r["value"])) for rs in event["records"].values() for r in rs])
'''


def _handlers(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location("bench_handlers", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _percentiles(ms: list[float]) -> str:
    ms = sorted(ms)
    return f"p50 {statistics.median(ms):.1f} ms, p99 {ms[min(len(ms) - 1, int(len(ms) * .99))]:.1f} ms ({len(ms)})"


def _waited(service: Service, name: str, count: int) -> list[float]:
    return [job.attempts[0].result["waited"] * 1000
            for job in service.db.list_jobs(bucket=f"stream:{name}", limit=count + 50)
            if job.attempts and (job.attempts[0].result or {}).get("waited") is not None]


def _latency(service: Service, name: str, count: int) -> str:
    poller = Poller(service, admin.mapping(service, name), worker="bench", embedded_url=_own(service)).start()
    time.sleep(1.0)
    try:
        for i in range(count):
            admin.put(service, name, [(None, json.dumps({"v": i, "sent": time.time()}).encode())])
            time.sleep(0.02)
        time.sleep(1.0)
    finally:
        poller.stop()
    return _percentiles(_waited(service, name, count))


def _own(service: Service) -> str:
    return broker_url(service.settings)


# --- embedded Redis ------------------------------------------------------------------------------


def plain_redis_loop(client: Any, key: str, records: int, handler: Any) -> float:
    """The minimal Redis Streams consumer: read 100, call the handler, acknowledge; seconds for ``records``."""
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


def _caught_up(client: Any, key: str, group: str) -> bool:
    """Every record of ``key`` delivered to ``group`` and acknowledged (two small commands)."""
    newest = client.xrevrange(key, count=1)
    found = {g["name"]: g for g in client.xinfo_groups(key)}.get(group.encode())
    return bool(found and newest) and found["last-delivered-id"] == newest[0][0] and not found["pending"]


def _committed(client: Any, key: str, group: str) -> int:
    """How many records ``group`` committed (the ``v`` of the record at its position, plus one; 0: none)."""
    found = {g["name"]: g for g in client.xinfo_groups(key)}.get(group.encode())
    at = client.xrange(key, min=found["last-delivered-id"], max=found["last-delivered-id"]) if found else []
    return json.loads(at[0][1][b"data"])["v"] + 1 if at else 0


def _poller_rate(service: Service, client: Any, records: int) -> float:
    """Records/s of fileproc's poller through ``records`` records put already: timed from its first commit (the
    runner started and warm: the latency part times a cold path) to its last, as the plain loop is timed from
    its first read."""
    key = STREAM_PREFIX + "redis"
    before = _committed(client, key, "fileproc-redis")
    poller = Poller(service, admin.mapping(service, "redis"), worker="bench", embedded_url=_own(service))
    poller.start()
    try:
        while (first := _committed(client, key, "fileproc-redis")) == before:
            time.sleep(0.001)
        start = time.perf_counter()
        while not _caught_up(client, key, "fileproc-redis"):
            time.sleep(0.01)
        return (before + records - first) / (time.perf_counter() - start)
    finally:
        poller.stop()


def embedded(service: Service, handlers: Any, args: argparse.Namespace) -> None:
    """``--pairs`` rounds of the plain loop then fileproc's, each on ``--records`` new records; the medians."""
    client = redis.Redis.from_url(redis_py_url(_own(service)))
    print(f"embedded Redis, {args.records:,} records a round, batches of 100:")
    plains, ours, ingests = [], [], []
    for round_ in range(args.pairs):
        payloads = [(None, json.dumps({"v": round_ * args.records + i}).encode()) for i in range(args.records)]
        start = time.perf_counter()
        for i in range(0, len(payloads), 500):
            admin.put(service, "redis", payloads[i:i + 500])
        ingests.append(len(payloads) / (time.perf_counter() - start))
        with client.pipeline(transaction=False) as pipe:  # the plain loop's own copy of the records
            for _, data in payloads:
                pipe.xadd(STREAM_PREFIX + "plain", {"data": data})
            pipe.execute()
        plains.append(args.records / plain_redis_loop(client, STREAM_PREFIX + "plain", args.records,
                                                      handlers.kinesis))
        ours.append(_poller_rate(service, client, args.records))
        print(f"  round {round_ + 1}: plain {plains[-1]:,.0f} records/s, fileproc {ours[-1]:,.0f}, "
              f"ratio {ours[-1] / plains[-1]:.2f}")
    plain, mine = statistics.median(plains), statistics.median(ours)
    print(f"  plain redis-py loop, handler in-process   {plain:>10,.0f} records/s (median)")
    print(f"  fileproc poller, deployed handler         {mine:>10,.0f} records/s (median)"
          f"   ratio {statistics.median(o / p for o, p in zip(ours, plains, strict=True)):.2f} (median of the rounds')")
    print(f"  put in batches of 500 (admin.put)         {statistics.median(ingests):>10,.0f} records/s")
    print(f"  put -> handler started: {_latency(service, 'redis', args.latency)}")


# --- Kafka ---------------------------------------------------------------------------------------


def plain_kafka_loop(bootstrap: str, topic: str, records: int, handler: Any) -> float:
    """The minimal confluent-kafka consumer: consume 100, call the handler, commit; seconds for ``records``."""
    from confluent_kafka import Consumer

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "plain", "enable.auto.commit": False,
                         "auto.offset.reset": "earliest", "group.protocol": "consumer"})
    consumer.subscribe([topic])
    done, start = 0, None
    while done < records:
        messages = [m for m in consumer.consume(100, timeout=1.0) if m.error() is None]
        if not messages:
            continue
        start = start or time.perf_counter()
        event = {"eventSource": "SelfManagedKafka", "records": {f"{topic}-0": [
            {"offset": m.offset(), "value": base64.b64encode(m.value() or b"").decode()} for m in messages]}}
        handler(event, None)
        consumer.commit(asynchronous=False)
        done += len(messages)
    elapsed = time.perf_counter() - (start or time.perf_counter())
    consumer.close()
    return elapsed


def kafka(service: Service, handlers: Any, args: argparse.Namespace, broker: Any) -> None:
    payloads = [(None, json.dumps({"v": i}).encode()) for i in range(args.records)]
    for i in range(0, len(payloads), 5000):
        admin.put(service, "kafka", payloads[i:i + 5000])
    plain = plain_kafka_loop(broker.bootstrap, "bench", args.records, handlers.kafka)
    poller = Poller(service, admin.mapping(service, "kafka"), worker="bench")
    poller.start()
    start = None
    try:
        while True:  # from the first batch run to the last record committed, as the plain loop is timed
            status = admin.status(service, "kafka")[0]["partitions"]
            if start is None and any(p["batches"] for p in status):
                start = time.perf_counter()
            if status and status[0]["lag_records"] == 0:
                break
            time.sleep(0.05)
    finally:
        ours = time.perf_counter() - (start or time.perf_counter())
        poller.stop()
    print(f"Kafka (one partition), {args.records:,} records, batches of 100:")
    print(f"  plain confluent-kafka loop, in-process    {args.records / plain:>10,.0f} records/s")
    print(f"  fileproc poller, deployed handler         {args.records / ours:>10,.0f} records/s"
          f"   ratio {plain / ours:.2f}  (within ~0.05 s: the status is polled)")
    print(f"  put -> handler started: {_latency(service, 'kafka', args.latency)}")


# --- HTTP ingest -------------------------------------------------------------------------------


def http(root: Path, config: Path, args: argparse.Namespace) -> None:
    from tests.servers import free_port

    port = free_port()
    served = config.with_name("served.toml")
    served.write_text(config.read_text() + f'\n[api]\nport = {port}\nwebhook_token = "bench-webhook"\n'
                                           'admin_token = "bench-admin"\n')
    log = (root / "serve.log").open("wb")
    server = subprocess.Popen([sys.executable, "-m", "fileproc", "--config", str(served), "serve"], stdout=log,
                              stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, headers={"Authorization": "Bearer bench-webhook"}, timeout=30) as client:
            for _ in range(100):
                with contextlib.suppress(httpx.HTTPError):
                    if client.get("/healthz").status_code == 200:
                        break
                time.sleep(0.1)
            body = {"Records": [{"Data": base64.b64encode(json.dumps({"v": i}).encode()).decode(),
                                 "PartitionKey": f"k{i % 10}"} for i in range(500)]}
            client.post("/streams/ingest/records", json=body).raise_for_status()  # (the connection opened)
            requests = max(1, args.records // 500)
            start = time.perf_counter()
            for _ in range(requests):
                client.post("/streams/ingest/records", json=body).raise_for_status()
            elapsed = time.perf_counter() - start
        print(f"POST /streams/NAME/records on fileproc serve, {requests} requests of 500 records: "
              f"{requests * 500 / elapsed:,.0f} records/s accepted")
    finally:
        server.terminate()
        server.wait(30)


# --- memory --------------------------------------------------------------------------------------


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


def _rss_by_part() -> tuple[float, float]:
    """(this process's RSS, its runners'), in MB: the embedded broker, also a child here, is not counted."""
    runners = 0.0
    children = [c for task in Path(f"/proc/{os.getpid()}/task").iterdir()
                for c in (task / "children").read_text().split()]  # (runners are started by a thread of their own)
    for child in children:
        with contextlib.suppress(OSError, StopIteration):
            if b"redis-server" not in Path(f"/proc/{child}/cmdline").read_bytes():
                runners += _rss_mb(int(child))
    return _rss_mb(os.getpid()), runners


def memory(service: Service, args: argparse.Namespace) -> None:
    from fileproc.runtime.outbox import Relay

    client = redis.Redis.from_url(redis_py_url(_own(service)))
    names = ["m1", "m2", "m3"]
    relay = Relay(service).start()  # as in a worker: it also checkpoints SQLite's write-ahead log
    pollers = [Poller(service, admin.mapping(service, n), worker="bench", embedded_url=_own(service)).start()
               for n in names]
    per_stream = args.records // len(names)
    samples = []
    try:
        for round_ in range(args.rounds):
            for name in names:
                for i in range(0, per_stream, 2000):
                    admin.put(service, name, [(None, b'{"v": 1}')] * min(2000, per_stream - i))
            for name in names:
                while not _caught_up(client, STREAM_PREFIX + name, f"fileproc-{name}"):
                    time.sleep(0.05)
                client.xtrim(STREAM_PREFIX + name, maxlen=0)  # (the bench's own memory: Redis's)
            poller_mb, runners_mb = _rss_by_part()
            samples.append(poller_mb + runners_mb)
            print(f"  after {(round_ + 1) * per_stream * len(names):>12,} records: poller process {poller_mb:6.1f} MB"
                  f", its runners {runners_mb:6.1f} MB RSS", flush=True)
    finally:
        for poller in pollers:
            poller.stop()
        relay.stop()
    print(f"memory: first {samples[0]:.1f} MB, last {samples[-1]:.1f} MB, highest {max(samples):.1f} MB")


# --- setup ---------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--latency", type=int, default=200, help="records put one by one for the latency figures")
    parser.add_argument("--parts", default="embedded,kafka,http")
    parser.add_argument("--rounds", type=int, default=10, help="memory: rounds of --records records")
    parser.add_argument("--pairs", type=int, default=3, help="embedded: rounds of the plain loop then fileproc's")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        root = Path(tmp)
        code = root / "handlers"
        code.mkdir()
        (code / "app.py").write_text(HANDLERS)
        broker = None
        streams = [("redis", "embedded:redis", "kinesis"), ("ingest", "embedded:ingest", "kinesis"),
                   *((n, f"embedded:{n}", "kinesis") for n in ("m1", "m2", "m3"))]
        if "kafka" in parts and os.environ.get("FILEPROC_KAFKA_LIBS"):
            from tests.kafka_server import kafka_server

            broker = stack.enter_context(kafka_server())
            broker.create_topic("bench", partitions=1)
            streams.append(("kafka", f"kafka://{broker.bootstrap}/bench", "kafka"))
        elif "kafka" in parts:
            print("kafka: skipped (set FILEPROC_KAFKA_LIBS: .ci/kafka.sh)")
        config = root / "fileproc.toml"
        config.write_text(f'data_dir = "{root / "data"}"\n' + "".join(
            f'[[streams]]\nname = "{n}"\nsource = "{s}"\nfunction = "{f}"\n' for n, s, f in streams))
        for function in ("kinesis", "kafka"):
            deployed = CliRunner().invoke(cli, ["--config", str(config), "functions", "deploy", str(code),
                                                "--name", function, "--handler", f"app.{function}"])
            assert deployed.exit_code == 0, deployed.output
        # The deploys set logging up inside CliRunner, whose buffer would keep every later line (each batch's
        # REPORT): log to a file instead, as a worker logs to its own.
        logging.getLogger().handlers = [logging.FileHandler(root / "worker.log")]
        if "http" in parts:
            http(root, config, args)
        settings = load_settings(config, env={})
        redis_server = EmbeddedBroker(settings.data_dir / "broker", embedded_socket(settings))  # as `fileproc serve`
        redis_server.start()
        stack.callback(redis_server.stop)
        stack.callback(pool().close)
        service = build(settings)
        service.prepare_buckets()
        handlers = _handlers(code / "app.py")
        if "embedded" in parts:
            embedded(service, handlers, args)
        if broker is not None:
            kafka(service, handlers, args, broker)
        if "memory" in parts:
            memory(service, args)


if __name__ == "__main__":
    main()
