"""Fairness between functions: one invocation of B behind a burst of A, against B on an idle worker.

Two deployed functions on ``fileproc serve`` (the embedded default: its
Redis, SQLite, the folder watcher, one worker of concurrency 2): ``A``
sleeps one second, ``B`` returns at once. Each is a pipeline's one step
(``a-in`` -> A, ``b-in`` -> B); an upload is a file renamed into the bucket
folder, its result the job's end as a client polling the state database
sees it (every 10 ms).

1. **idle**: B's upload -> result with nothing else queued, ``--runs`` times.
2. **behind A**: ``--burst`` files of A queued (the backlog topped up
   before each run, so that many are waiting), then one file of B:
   B's upload -> result, ``--runs`` times, and how many of A's steps were
   still waiting when B's ended.

On a worker that serves the functions' queues in turn, B waits for one of
A's steps to end (up to a second); on one shared queue, for the whole
backlog (``--burst`` / 2 seconds). The goal: B's p50 and p95 within 1 s
of idle.

    python -m bench.fairness [--runs 7] [--burst 60]
    cd /tmp/before && PYTHONPATH=/tmp/before python /work/main/bench/fairness.py   # other code
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import tomli_w

from bench.pipeline import _free_port, _Process, _wait

SLOW = "import time\n\ndef handler(event, context):\n    time.sleep(1)\n    return {'slept': 1}\n"
QUICK = "def handler(event, context):\n    return {'ok': True}\n"
CONCURRENCY = 2


def _count(db: Path, sql: str, *args: Any) -> int:
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
            return int(conn.execute(sql, args).fetchone()[0])
    except sqlite3.Error:
        return 0


def _waiting(db: Path, pipeline: str) -> int:
    """Jobs of ``pipeline`` queued and not started yet."""
    return _count(db, "SELECT count(*) FROM jobs WHERE pipeline = ? AND status = 'queued'", pipeline)


def _ended(db: Path, bucket: str, key: str) -> bool:
    return bool(_count(db, "SELECT count(*) FROM jobs WHERE bucket = ? AND key = ? AND status IN "
                           "('succeeded', 'failed', 'skipped')", bucket, key))


def _pipeline(name: str, bucket: str, function: str) -> dict[str, Any]:
    return {"name": name, "match": {"bucket": bucket}, "steps": [{"function": function}],
            "output": {"bucket": "derived", "key": "{key}/{name}"}}


def run(root: Path, runs: int, burst: int) -> tuple[list[float], list[float], list[int]]:
    """B's upload -> result in ms idle and behind A's backlog, and A's steps still waiting as each B ended."""
    port = _free_port()
    data = root / "data"
    config = root / "fileproc.toml"
    config.write_text(tomli_w.dumps({
        "data_dir": str(data), "api": {"host": "127.0.0.1", "port": port}, "watcher": {"settle_seconds": 0},
        "worker": {"concurrency": CONCURRENCY},
        "pipelines": [_pipeline("a", "a-in", "A"), _pipeline("b", "b-in", "B")]}))
    for name, code in (("A", SLOW), ("B", QUICK)):
        (root / f"{name.lower()}.py").write_text(code)
        subprocess.run([sys.executable, "-m", "fileproc", "--config", str(config), "functions", "deploy",
                        str(root / f"{name.lower()}.py"), "--name", name, "--handler", f"{name.lower()}.handler"],
                       check=True, capture_output=True, cwd=root)
    staging = data / "staging"  # same file system: a rename puts a file into place whole
    staging.mkdir(parents=True)
    db = data / "state.db"
    serve = _Process(config, ["serve", "--port", str(port)], root / "serve.log")
    counter = iter(range(10**9))

    def upload(bucket: str) -> str:
        key = f"f{next(counter):06d}"
        (staging / key).write_bytes(b"x")
        os.rename(staging / key, data / "buckets" / bucket / key)
        return key

    def b_once() -> float:
        started = time.perf_counter()
        key = upload("b-in")
        _wait(lambda: _ended(db, "b-in", key), 600, f"B's job of {key}", serve)
        return (time.perf_counter() - started) * 1000

    try:
        def ready() -> bool:
            try:
                up = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False
            return up and "celery.apps.worker" in serve.log.read_text(errors="replace")

        _wait(ready, 60, "fileproc serve and its worker", serve, every=0.2)
        for bucket in ("a-in", "b-in"):
            _wait(lambda b=bucket: (data / "buckets" / b).is_dir(), 30, f"bucket {bucket}", serve)
        b_once()  # B's first runner started (a cold start is not what is measured)
        idle = []
        for _ in range(runs):
            time.sleep(0.3)
            idle.append(b_once())
        behind, left = [], []
        for _ in range(runs):
            for _ in range(burst - _waiting(db, "a")):
                upload("a-in")
            _wait(lambda: _waiting(db, "a") >= burst - CONCURRENCY, 60, "A's backlog", serve)
            time.sleep(0.5)  # the worker has taken its next A steps: B comes after them
            behind.append(b_once())
            left.append(_waiting(db, "a"))
    finally:
        serve.stop()
    return idle, behind, left


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="B's invocations idle, and as many behind A's backlog")
    parser.add_argument("--burst", type=int, default=60, help="A's one-second steps waiting before each B")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fileproc-bench-fairness-") as tmp:
        idle, behind, left = run(Path(tmp), args.runs, args.burst)
    print(f"{'B upload -> result, ms':36}{'p50':>10}{'p95':>10}{'n':>5}")
    print(f"{'idle worker':36}{statistics.median(idle):>10.0f}{_p95(idle):>10.0f}{len(idle):>5}")
    print(f"{f'behind {args.burst} queued steps of A':36}{statistics.median(behind):>10.0f}{_p95(behind):>10.0f}"
          f"{len(behind):>5}")
    print(f"\nB behind A - B idle: p50 {statistics.median(behind) - statistics.median(idle):+.0f} ms, "
          f"p95 {_p95(behind) - _p95(idle):+.0f} ms (goal: within 1000 ms)")
    print(f"A's steps still waiting as each B ended: {left}")


if __name__ == "__main__":
    main()
