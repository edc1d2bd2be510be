"""How long a Prometheus scrape of ``/metrics`` takes against a long history, and that it counts only what is new.

Fills a SQLite state database straight through its tables (SQLAlchemy core,
one transaction) with ``--attempts`` finished attempts (jobs: mostly
succeeded, some failed, skipped or retried, a few queued), then times:

- **catching up**: the scrapes until the whole history is counted, and the
  longest of them (once per database: a database made before the totals, or
  a process that keeps its counts in memory);

then, each with a new :class:`fileproc.metrics.Metrics` (what a freshly
started API process has):

- **first**: the first scrape of a new process;
- **again**: a second scrape with nothing new;
- **+N**: a scrape after ``--new`` more finished attempts, and the check that
  ``fileproc_attempts_total`` rose by exactly that many.

The same is run on a small history (``--small`` attempts) in the same run:
the ratio large/small is how much a scrape's cost grows with history (1.0:
not at all). ``PYTHONPATH=/other/checkout`` measures another checkout's code
with this script::

    python -m bench.metrics_scrape                        # 200,000 attempts against 2,000
    git archive HEAD | tar -x -C /tmp/before && PYTHONPATH=/tmp/before python bench/metrics_scrape.py
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import tomli_w
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import insert

from fileproc.app import build
from fileproc.config import load_settings
from fileproc.intake.webhook import Counters
from fileproc.metrics import Metrics
from fileproc.service import Service
from fileproc.state.models import AttemptRow, JobRow

FUNCTION = "thumbnail"
PIPELINE = "thumbnails"


def make_service(folder: Path) -> Service:
    config = folder / "fileproc.toml"
    config.write_text(tomli_w.dumps({
        "data_dir": str(folder / "data"), "broker": {"url": "redis://127.0.0.1:9/0"},
        "pipelines": [{"name": PIPELINE, "match": {"bucket": "uploads"}, "steps": [{"function": FUNCTION}],
                       "output": {"bucket": "derived"}}]}))
    return build(load_settings(config, env={}))


def fill(service: Service, attempts: int, *, start: int = 0, age: timedelta = timedelta(days=1)) -> int:
    """``attempts`` finished attempts (one more when the last job is a retried one) and their jobs,
    spread over ``age`` up to a minute ago; how many attempts."""
    now = datetime.now(UTC)
    first = now - age - timedelta(minutes=1)
    jobs, rows = [], []
    job_id, attempt_id = start, start
    while attempt_id < start + attempts:
        job_id += 1
        n = job_id
        created = first + age * ((attempt_id - start) / attempts)
        status = ("failed" if n % 15 == 0 else "skipped" if n % 33 == 0 else "queued" if n % 997 == 0
                  else "succeeded")
        jobs.append({"id": job_id, "pipeline": PIPELINE, "bucket": "uploads", "key": f"photos/{n}.jpg",
                     "version": f"v{n}", "etag": f"e{n}", "status": status, "step_index": 0, "sends": 1,
                     "event": {"bucket": "uploads", "key": f"photos/{n}.jpg", "time": created.isoformat()},
                     "created_at": created, "updated_at": created,
                     "finished_at": None if status == "queued" else created + timedelta(seconds=2)})
        if status == "queued":
            continue
        for retry in range(2 if n % 15 == 0 else 1):  # failed jobs: a failure, then one retried
            attempt_id += 1
            started = created + timedelta(seconds=0.5 + retry)
            rows.append({"id": attempt_id, "job_id": job_id, "step_index": 0, "function": FUNCTION,
                         "status": ("failed" if n % 15 == 0 else "skipped" if n % 33 == 0 else "succeeded"),
                         "worker": "w1", "started_at": started, "finished_at": started + timedelta(seconds=0.4),
                         "duration_ms": 100 + n % 900, "peak_memory_kb": 40_000 + n % 50_000,
                         "cold_start": n % 50 == 0})
    with service.db.engine.begin() as c:
        for table, values in ((JobRow.__table__, jobs), (AttemptRow.__table__, rows)):
            for at in range(0, len(values), 20_000):
                c.execute(insert(table), values[at:at + 20_000])
    return len(rows)


def attempts_total(body: bytes) -> float:
    return sum(s.value for f in text_string_to_metric_families(body.decode()) for s in f.samples
               if s.name == "fileproc_attempts_total")


def measure(attempts: int, new: int, runs: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as folder:
        service = make_service(Path(folder))
        started = time.perf_counter()
        expected = fill(service, attempts)
        filled = time.perf_counter() - started
        # Catching up: the scrapes until the whole history is counted (once per database).
        metrics = Metrics(service, Counters())
        catching: list[float] = []
        while True:
            started = time.perf_counter()
            body = metrics.render()
            catching.append(time.perf_counter() - started)
            if attempts_total(body) == expected:
                break
            assert len(catching) < 10_000, "the scrapes never caught up"
        firsts, agains, news = [], [], []
        for run in range(runs):  # each run a new Metrics: what a newly started API process has
            metrics = Metrics(service, Counters())
            started = time.perf_counter()
            body = metrics.render()
            firsts.append(time.perf_counter() - started)
            assert attempts_total(body) == expected
            started = time.perf_counter()
            metrics.render()
            agains.append(time.perf_counter() - started)
            added = fill(service, new, start=attempts + 10 * new * run + 10 * new, age=timedelta(seconds=30))
            started = time.perf_counter()
            body = metrics.render()
            news.append(time.perf_counter() - started)
            assert attempts_total(body) - expected == added, f"+{added} attempts: {attempts_total(body) - expected}"
            expected += added
        service.db.engine.dispose()
    return {"attempts": attempts, "fill_s": filled, "catch_up": sum(catching), "scrapes": len(catching),
            "longest": max(catching), "first": statistics.median(firsts), "again": statistics.median(agains),
            "new": statistics.median(news)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--attempts", type=int, default=200_000, help="the long history (default 200000)")
    parser.add_argument("--small", type=int, default=2_000, help="the short history to compare with (2000)")
    parser.add_argument("--new", type=int, default=500, help="attempts added before the last scrape (500)")
    parser.add_argument("--runs", type=int, default=3, help="new Metrics objects per history (3)")
    args = parser.parse_args()
    results = [measure(size, args.new, args.runs) for size in (args.small, args.attempts)]
    print(f"{'attempts':>9} {'filled in':>9} {'catching up (scrapes, longest)':>32} {'first scrape':>13} "
          f"{'again':>9} {f'+{args.new} new':>9}")
    for r in results:
        print(f"{r['attempts']:>9,} {r['fill_s']:>8.1f}s {r['catch_up']:>12.1f}s ({r['scrapes']:>4}, "
              f"{r['longest'] * 1000:>7.1f}ms) {r['first'] * 1000:>11.1f}ms {r['again'] * 1000:>7.1f}ms "
              f"{r['new'] * 1000:>7.1f}ms")
    small, large = results
    print(f"large/small: first {large['first'] / small['first']:.2f}x, again {large['again'] / small['again']:.2f}x, "
          f"+new {large['new'] / small['new']:.2f}x; each +{args.new} counted exactly")


if __name__ == "__main__":
    main()
