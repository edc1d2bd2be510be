"""How many notifications `fileproc api` takes, how fast it answers, and what a burst loses.

Runs the real ``fileproc api`` process (uvicorn) against SQLite and against
PostgreSQL (a throwaway cluster from tests/servers.py), with a Redis broker and
no worker, and a load generator in this script: a minimal keep-alive HTTP/1.1
client on asyncio (a general client such as httpx costs more CPU per request
than the server under test, on the same two cores), one record per request as
versitygw sends them.

1. **accepted/s**: 64 connections post back to back for ``--seconds``; the
   rate of 200 answers (each one is a committed job), and a check that the
   jobs table holds exactly that many jobs.
2. **p50/p99 at a fixed rate**: ``--rate`` requests a second (open loop, on a
   schedule) for ``--seconds``; answer time from send to answer.
3. **burst loss**: ``--uploads`` uploads to versitygw (webhook to the API,
   ``?keys=raw``) from ``--threads`` client threads, as fast as they go; then
   the jobs are counted against the uploads (no reconciliation: what the
   notifications alone delivered).

``--code DIR`` runs another checkout's fileproc (e.g. ``git worktree add
/tmp/fileproc-before HEAD`` for the code before a change), with this
script's load generator::

    python -m bench.intake                              # this checkout
    python -m bench.intake --code /tmp/fileproc-before  # another one
    python -m bench.intake --against /tmp/fileproc-before --pairs 5   # both, phases taking turns
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import redis
import sqlalchemy
import tomli_w

from tests.servers import free_port, postgres_server, redis_server, versitygw_server

TOKEN = "bench-webhook-token"
ADMIN = "bench-admin-token"
ROOT = Path(__file__).resolve().parent.parent
API_ARGS: list[str] = []
"""More arguments for ``fileproc api`` (``--workers N``)."""
SERVER_PATH: list[str] = []
"""More folders on the API process's PYTHONPATH (``--server-path``)."""


def _config(path: Path, data: Path, database: str, broker: str, port: int, storage: dict[str, Any]) -> Path:
    settings = {
        "data_dir": str(data), "log_level": "WARNING",
        "storage": storage,
        "broker": {"url": broker},
        "database": {"url": database},
        "api": {"host": "127.0.0.1", "port": port, "webhook_token": TOKEN, "admin_token": ADMIN},
        "pipelines": [{"name": "thumbnails", "match": {"bucket": "uploads", "suffix": [".jpg"]},
                       "steps": [{"function": "thumbnail"}],
                       "output": {"bucket": "derived", "key": "thumbnails/{key}/{name}"}}],
    }
    path.write_text(tomli_w.dumps(settings))
    return path


@contextlib.contextmanager
def api_process(code: Path, config: Path, port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(code), *SERVER_PATH])}
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "fileproc", "--config", str(config), "api", *API_ARGS],
                                cwd=code, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"fileproc api exited:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit(f"fileproc api did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- the load generator ---------------------------------------------------------------


def body_for(key: str) -> bytes:
    return json.dumps({"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "eventTime": "2026-11-27T10:00:00.000Z",
        "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": "uploads"},
               "object": {"key": key, "size": 1234, "eTag": "e" + key.replace("/", "")[-30:],
                          "sequencer": "0055AED6DCD90281E5"}},
    }]}).encode()


class Connection:
    """One keep-alive HTTP/1.1 connection posting notification bodies."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, body: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        head = (f"POST /events?token={TOKEN}&keys=raw HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        self.writer.write(head + body)
        try:
            status_line = await self.reader.readline()
            length, close = 0, False
            while True:
                line = await self.reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
                elif name.lower() == "connection" and "close" in value.lower():
                    close = True
            await self.reader.readexactly(length)
            status = int(status_line.split()[1])
        except (ConnectionError, IndexError, ValueError, asyncio.IncompleteReadError):
            self.close()
            return 0
        if close:
            self.close()
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def closed_loop(port: int, seconds: float, connections: int, prefix: str) -> dict[str, Any]:
    """Every connection posts back to back for ``seconds``."""
    statuses: dict[int, int] = {}
    counter = iter(range(10**9))
    end = time.monotonic() + seconds

    async def run(conn: Connection) -> None:
        while time.monotonic() < end:
            status = await conn.post(body_for(f"{prefix}/{next(counter)}.jpg"))
            statuses[status] = statuses.get(status, 0) + 1
        conn.close()

    start = time.monotonic()
    await asyncio.gather(*(run(Connection(port)) for _ in range(connections)))
    elapsed = time.monotonic() - start
    return {"ok": statuses.get(200, 0), "statuses": statuses, "per_second": statuses.get(200, 0) / elapsed}


async def open_loop(port: int, seconds: float, rate: float, prefix: str, connections: int = 64) -> dict[str, Any]:
    """``rate`` requests a second on a schedule over ``connections`` keep-alive connections.

    Answer time is counted from when a request was due, not from when a free
    connection took it, so a stalled server cannot hide its queue.
    """
    due: asyncio.Queue[tuple[int, float] | None] = asyncio.Queue()
    times: list[float] = []
    statuses: dict[int, int] = {}

    async def worker() -> None:
        conn = Connection(port)
        while (item := await due.get()) is not None:
            index, scheduled = item
            status = await conn.post(body_for(f"{prefix}/{index}.jpg"))
            times.append(time.perf_counter() - scheduled)
            statuses[status] = statuses.get(status, 0) + 1
        conn.close()

    workers = [asyncio.create_task(worker()) for _ in range(connections)]
    await asyncio.sleep(0)
    start = time.perf_counter()
    for index in range(int(seconds * rate)):
        scheduled = start + index / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        due.put_nowait((index, scheduled))
    for _ in workers:
        due.put_nowait(None)
    await asyncio.gather(*workers)
    times.sort()
    return {"p50_ms": 1000 * statistics.median(times), "p99_ms": 1000 * times[int(len(times) * 0.99) - 1],
            "max_ms": 1000 * times[-1], "statuses": statuses}


def tree_cpu(pid: int) -> float:
    """CPU seconds used so far by ``pid`` and its children (uvicorn's ``--workers``)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(stat.parent.name) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def count_jobs(database: str, prefix: str) -> int:
    engine = sqlalchemy.create_engine(database)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sqlalchemy.text("SELECT count(DISTINCT key) FROM jobs WHERE key LIKE :p"),
                                    {"p": prefix + "/%"}).scalar_one())
    finally:
        engine.dispose()


def run(coro: Any) -> Any:
    """Run the load generator on uvloop when it is installed (it costs less CPU per request)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def wait_sent(broker: str, timeout: float = 60) -> None:
    """Until the API has sent what the last phase made (the broker's queue stops growing)."""
    client = redis.Redis.from_url(broker)
    last, since, deadline = -1, time.monotonic(), time.monotonic() + timeout
    while time.monotonic() < deadline and time.monotonic() - since < 1.0:
        length = int(client.llen("thumbnail"))
        if length != last:
            last, since = length, time.monotonic()
        time.sleep(0.1)


def receiver(code: Path, work: Path, name: str, database: str, broker: str, args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    config = _config(work / f"{name}.toml", work / f"data-{name}", database, broker, port,
                     {"backend": "local"})
    with api_process(code, config, port, work / f"api-{name}.log") as proc:
        run(closed_loop(port, 1.0, 8, "warmup"))
        cpu = tree_cpu(proc.pid)
        load = run(closed_loop(port, args.seconds, args.connections, "load"))
        cpu = tree_cpu(proc.pid) - cpu
        wait_sent(broker)  # the latency phase does not compete with sending the last one's messages
        latency = run(open_loop(port, args.seconds, args.rate, "rate"))
        server = server_times(port)
        time.sleep(1.0)
        recorded = count_jobs(database, "load")
    return {"accepted_per_s": load["per_second"], "ok": load["ok"], "cpu_ms": 1000 * cpu / max(1, load["ok"]),
            "load_statuses": load["statuses"],
            "jobs": recorded, **{k: latency[k] for k in ("p50_ms", "p99_ms", "max_ms")},
            "rate_statuses": latency["statuses"], "server": server}


def server_times(port: int) -> str:
    """The API's own answer times (``GET /stats``; one process's last 4,096 answers), where it has them."""
    try:
        stats = httpx.get(f"http://127.0.0.1:{port}/stats", headers={"authorization": f"Bearer {ADMIN}"}).json()
    except (httpx.HTTPError, ValueError):
        return "n/a"
    if "answer_ms_p50" not in stats:
        return "n/a"
    return f"{stats['answer_ms_p50']:.1f} / {stats['answer_ms_p99']:.1f}"


def burst(code: Path, work: Path, broker: str, args: argparse.Namespace) -> dict[str, Any]:
    from minio import Minio

    port, gw_port = free_port(), free_port()
    database = f"sqlite:///{work / 'burst.db'}"
    storage = {"backend": "s3", "endpoint": f"127.0.0.1:{gw_port}", "access_key": "fileproc-test",
               "secret_key": "", "secure": False}
    config = _config(work / "burst.toml", work / "data-burst", database, broker, port, storage)
    url = f"http://127.0.0.1:{port}/events?token={TOKEN}&keys=raw"
    with contextlib.ExitStack() as stack:
        # versitygw probes its webhook once at start; the API then restarts with the
        # gateway's (random) secret, so it can HEAD objects a notification left incomplete.
        with api_process(code, config, port, work / "api-burst.log"):
            gw = stack.enter_context(versitygw_server(url, port=gw_port))
        storage["secret_key"] = gw.secret_key
        _config(work / "burst.toml", work / "data-burst", database, broker, port, storage)
        stack.enter_context(api_process(code, config, port, work / "api-burst.log"))
        client = Minio(gw.endpoint, gw.access_key, gw.secret_key, secure=False)
        client.make_bucket("uploads")
        payload = b"\xff\xd8\xff" + os.urandom(2000)
        lock = threading.Lock()
        done = [0]

        def upload(index: int) -> None:
            client.put_object("uploads", f"burst/{index}.jpg", io.BytesIO(payload), len(payload),
                              content_type="image/jpeg")
            with lock:
                done[0] += 1

        start = time.monotonic()
        with ThreadPoolExecutor(args.threads) as pool:
            list(pool.map(upload, range(args.uploads)))
        elapsed = time.monotonic() - start
        # versitygw posts each notification after its upload: wait until the count stops moving.
        last, stable_since = -1, time.monotonic()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = count_jobs(database, "burst")
            if found != last:
                last, stable_since = found, time.monotonic()
            elif found == args.uploads or time.monotonic() - stable_since > 5:
                break
            time.sleep(0.5)
    return {"uploads": done[0], "upload_per_s": done[0] / elapsed, "jobs": last, "lost": done[0] - last}


def interleaved(work: Path, broker: str, args: argparse.Namespace) -> None:
    """``--against DIR``: this checkout and DIR side by side (both APIs up at once, SQLite), their load
    phases taking turns for ``--pairs`` rounds, so a busy shared machine weighs on both alike."""
    apis: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        for name, code in (("this", args.code), ("against", args.against)):
            port = free_port()
            config = _config(work / f"{name}.toml", work / f"data-{name}", f"sqlite:///{work / name}.db", broker,
                             port, {"backend": "local"})
            proc = stack.enter_context(api_process(code, config, port, work / f"api-{name}.log"))
            run(closed_loop(port, 1.0, 8, f"warmup-{name}"))
            apis[name] = (port, proc)
        rows: dict[str, list[dict[str, float]]] = {name: [] for name in apis}
        for pair in range(args.pairs):
            for name in (list(apis) if pair % 2 == 0 else list(reversed(apis))):
                port, proc = apis[name]
                cpu = tree_cpu(proc.pid)
                load = run(closed_loop(port, args.seconds, args.connections, f"load-{pair}"))
                cpu_load = tree_cpu(proc.pid) - cpu
                wait_sent(broker)
                cpu = tree_cpu(proc.pid)
                latency = run(open_loop(port, args.seconds, args.rate, f"rate-{pair}"))
                cpu_rate = tree_cpu(proc.pid) - cpu
                wait_sent(broker)
                redis.Redis.from_url(broker).flushall()
                rows[name].append({"per_s": load["per_second"], "cpu_ms": 1000 * cpu_load / max(1, load["ok"]),
                                   "cpu_rate_ms": 1000 * cpu_rate / max(1, sum(latency["statuses"].values())),
                                   "p99_ms": latency["p99_ms"], "ok": float(latency["statuses"].get(200, 0))})
                r = rows[name][-1]
                print(f"pair {pair + 1} {name:<8} accepted/s {r['per_s']:>6.0f}  CPU ms/req {r['cpu_ms']:.3f} "
                      f"(at {args.rate:g}/s: {r['cpu_rate_ms']:.3f})  p99 at {args.rate:g}/s {r['p99_ms']:>7.1f} ms")
    print(f"\nmedians over {args.pairs} pairs (this: {args.code}; against: {args.against})")
    print(f"{'':<8} {'accepted/s':>10} {'CPU ms/req':>10} {f'CPU at {args.rate:g}/s':>14} {'p99 ms':>8}")
    for name, found in rows.items():
        print(f"{name:<8} {statistics.median(r['per_s'] for r in found):>10.0f} "
              f"{statistics.median(r['cpu_ms'] for r in found):>10.3f} "
              f"{statistics.median(r['cpu_rate_ms'] for r in found):>14.3f} "
              f"{statistics.median(r['p99_ms'] for r in found):>8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--code", type=Path, default=ROOT, help="checkout whose fileproc to run (default: this one)")
    parser.add_argument("--server-path", action="append", default=[],
                        help="folder to add to the API process's PYTHONPATH, e.g. one with uvloop and httptools "
                             "installed (pip install --target DIR uvloop httptools) to measure them")
    parser.add_argument("--workers", type=int, default=1, help="fileproc api --workers (default 1)")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each load phase")
    parser.add_argument("--connections", type=int, default=64, help="connections posting back to back")
    parser.add_argument("--rate", type=float, default=1000.0, help="requests a second for the latency phase")
    parser.add_argument("--uploads", type=int, default=2000, help="uploads in the versitygw burst (0: skip)")
    parser.add_argument("--threads", type=int, default=48, help="client threads uploading")
    parser.add_argument("--only", choices=["sqlite", "postgres", "burst"], action="append",
                        help="run only these parts (repeatable)")
    parser.add_argument("--against", type=Path, help="another checkout: run both side by side, phases taking "
                        "turns (SQLite only), and print the medians")
    parser.add_argument("--pairs", type=int, default=5, help="rounds of --against (default 5)")
    args = parser.parse_args()
    SERVER_PATH.extend(args.server_path)
    if args.workers > 1:
        API_ARGS.extend(["--workers", str(args.workers)])
    parts = args.only or ["sqlite", "postgres", "burst"]
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="fileproc-bench-") as tmp, redis_server() as broker:
        work = Path(tmp)
        if args.against:
            interleaved(work, broker, args)
            return
        if "sqlite" in parts:
            rows["sqlite"] = receiver(args.code, work, "sqlite", f"sqlite:///{work / 'state.db'}", broker, args)
            redis.Redis.from_url(broker).flushall()
        if "postgres" in parts:
            with postgres_server() as database:
                rows["postgres"] = receiver(args.code, work, "postgres", database, broker, args)
            redis.Redis.from_url(broker).flushall()
        if "burst" in parts and args.uploads:
            rows["burst"] = burst(args.code, work, broker, args)
    print(f"\ncode: {args.code}; fileproc api {' '.join(API_ARGS)}; API process also on: {SERVER_PATH or 'nothing'}")
    print(f"{'database':<10} {'accepted/s':>10} {'CPU ms/req':>10} {'jobs/200s':>11} {'p50 ms':>8} {'p99 ms':>8}"
          f" {'max ms':>8} {'server p50/p99':>15}  (p at {args.rate:g}/s)  statuses")
    for name in ("sqlite", "postgres"):
        if name in rows:
            r = rows[name]
            print(f"{name:<10} {r['accepted_per_s']:>10.0f} {r['cpu_ms']:>10.2f} {r['jobs']:>5}/{r['ok']:<5} "
                  f"{r['p50_ms']:>8.1f} "
                  f"{r['p99_ms']:>8.1f} {r['max_ms']:>8.1f} {r['server']:>15}  load {r['load_statuses']} "
                  f"rate {r['rate_statuses']}")
    if "burst" in rows:
        b = rows["burst"]
        print(f"burst: {b['uploads']} uploads at {b['upload_per_s']:.0f}/s from {args.threads} threads -> "
              f"{b['jobs']} jobs, {b['lost']} lost")


if __name__ == "__main__":
    main()
