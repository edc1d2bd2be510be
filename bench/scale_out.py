"""Scale-out: one function's burst on one worker host, then on two (simulated hosts, network namespaces).

The production deployment of ``tests/test_chaos_hosts.py``, built with the
same helpers (imported from ``tests/``, as other benches import
``tests.servers`` and ``tests.helpers``): host0 (this network namespace)
runs versitygw, Redis, PostgreSQL, ``fileproc api`` (versitygw's webhook)
and ``fileproc reconcile``; each worker host is a network namespace
(``tests/netns.py``) running one ``fileproc worker --concurrency C`` that
reaches the servers only through its own veth pair, with a ``data_dir`` of
its own (the deployed function's package is installed on each host from
storage, as on separate machines). Settings are the defaults but for two:
``functions.credentials = "shared"`` (versitygw has no STS to give the
function keys of its own) and a reconciler that lists every 2-5 s, so a
notification versitygw loses costs seconds, not minutes (the jobs it made
are counted apart).

The work is one deployed Lambda-style function that **sleeps** ``--seconds``
(0.2) and writes one small output: the step waits, it does not compute. This
machine has two cores shared with other jobs, so CPU-bound steps would
measure the cores, not fileproc; a sleeping step measures what is asked
here: whether fileproc spreads one function's burst over the hosts it has
(broker, prefetch, leases, per-function queues) so that two hosts finish
it twice as fast. The CPU each part used during the burst is printed, to
show the store, the broker and the database were not the limit.

A round: the round's workers started and warmed (as many steps as they
have slots, not timed), ``--files`` small objects uploaded from 8 client
threads (as a user's client would), then the time until every upload's
result is stored (the last job's ``finished_at``, PostgreSQL's clock, the
same machine's; the 0.1 s poll that saw it is printed too).
files/s = files / (that time). Rounds alternate one host and two hosts
(``--rounds`` of each, order 1-2, 2-1, 1-2 ...), so drift in the machine's
load weighs on both. Every round checks each upload ran exactly once: one
job per key, succeeded, one attempt, one output recorded and one object
in the output bucket.

Needs root (network namespaces), iproute2, redis-server, PostgreSQL and
versitygw as the tests do (``FILEPROC_VERSITYGW=...``, see tests/servers.py)::

    python -m bench.scale_out                          # 120 files, 0.2 s steps, concurrency 1, 2 rounds each
    python -m bench.scale_out --files 200 --concurrency 2 --rounds 3
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import resource
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import redis

from bench.proctree import descendants
from fileproc.state import Job
from tests.chaos import Deployment, deployment, upload_in_threads, worker_pid
from tests.netns import Host, lab
from tests.procs import Process, fileproc, wait_for, write_config
from tests.servers import postgres_server, redis_server

FUNCTION = "sleepy"
BUCKET, OUTPUT_BUCKET = "burst", "burst-out"
UPLOAD_THREADS = 8

HANDLER = '''"""Waits SECONDS (the step's work: I/O, not CPU), then writes one small output."""
import time

SECONDS = {seconds!r}


def handler(event, context):
    time.sleep(SECONDS)
    context.output.put("done.txt", context.input.key.encode(), content_type="text/plain")
    return {{"slept": SECONDS}}
'''

PIPELINE = {
    "name": "scale",
    "match": {"bucket": BUCKET},
    "steps": [{"function": FUNCTION}],
    "output": {"bucket": OUTPUT_BUCKET, "key": "{key}/{name}"},
}


# --- CPU accounting ------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def tree_cpu(root: int) -> float:
    """CPU seconds used by ``root``'s process tree so far: the live ones' own and their reaped children's.

    A child that ends between two readings moves its time into its parent's
    reaped-children counters, so the difference of two readings stays right.
    """
    ticks = 0
    for pid in descendants(root):
        fields = _stat(pid)
        if fields is not None:
            ticks += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far (every core, everyone's work)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    total = sum(values[:8])  # (guest time is already in user)
    return (total - idle) / os.sysconf("SC_CLK_TCK"), total / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def postmaster_pid(database_url: str) -> int:
    import psycopg

    with psycopg.connect(database_url.replace("postgresql+psycopg://", "postgresql://")) as connection:
        row = connection.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    fields = _stat(int(row[0]))
    assert fields is not None
    return int(fields[1])


def versitygw_pid(endpoint: str) -> int:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
                if argv and argv[0].endswith(b"versitygw") and endpoint.encode() in argv:
                    return int(entry)
    raise RuntimeError(f"no versitygw process listens on {endpoint}")


# --- one round -----------------------------------------------------------------------------


@dataclass
class Round:
    hosts: int
    files: int
    seconds: float
    """Upload start -> the last result stored (the last job's finished_at)."""
    seen: float
    """Upload start -> the poll that saw every result."""
    uploads: float
    """Upload start -> the last upload answered."""
    by_host: list[int]
    """Steps each worker host ran."""
    sources: dict[str, int]
    """Jobs of the burst by what made them: the webhook, or the reconciler / runtime for a notification lost."""
    skipped: int
    """Jobs ended ``skipped`` (a notification that named the wrong object: versitygw under load)."""
    cpu: dict[str, float]
    """CPU seconds each part used during the burst."""
    busy: float
    """The whole machine's busy cores during the burst (everyone's work)."""

    @property
    def rate(self) -> float:
        return self.files / self.seconds


def start_workers(d: Deployment, hosts: list[Host], concurrency: int, label: str) -> list[Process]:
    """One ``fileproc worker`` per host, each with its own data_dir; returns once all are ready."""
    workers = []
    for host in hosts:
        env = {"FILEPROC_DATA_DIR": str(d.tmp / f"data-{host.name}")}
        workers.append(d.start(f"worker-{label}-{host.name}", ["worker", "--concurrency", str(concurrency)],
                               host, env=env))
    for worker in workers:
        wait_for(functools.partial(_ready, worker), 90, "a worker to be ready", worker)
    return workers


def _ready(worker: Process) -> bool:
    return "ready" in worker.log.read_text(errors="replace")


def settle(d: Deployment, succeeded: int, timeout: float = 300) -> float:
    """Wait until ``succeeded`` jobs succeeded in all; the time.time() when the poll saw it."""
    def done() -> float | None:
        counts = d.db.count_jobs()
        if counts["failed"]:  # none should: say why at once rather than time out
            failed = d.db.list_jobs("failed", limit=3)
            raise AssertionError(f"{counts['failed']} job(s) failed, e.g. {[(j.key, j.error) for j in failed]}")
        return time.time() if counts["succeeded"] >= succeeded else None

    return float(d.wait_for(done, timeout, f"{succeeded} succeeded jobs", interval=0.1))


def idle(d: Deployment) -> None:
    d.wait_for(lambda: (c := d.db.count_jobs())["queued"] == c["running"] == 0, 120, "no job queued or running")


def burst(d: Deployment, hosts: list[Host], files: int, concurrency: int, label: str,
          roots: dict[str, int]) -> Round:
    """Run one round on ``hosts`` (their workers started and stopped here); check it and measure it."""
    workers = start_workers(d, hosts, concurrency, label)
    try:
        warm = [f"{label}/warm/{n}.txt" for n in range(len(hosts) * concurrency)]
        before = d.db.count_jobs()["succeeded"]
        upload_in_threads(d, BUCKET, warm, len(warm))
        settle(d, before + len(warm))
        idle(d)

        keys = [f"{label}/burst/{n:05d}.txt" for n in range(files)]
        before = d.db.count_jobs()["succeeded"]
        parts = {**roots, **{f"worker on {h.name}": w.popen.pid for h, w in zip(hosts, workers, strict=True)}}
        cpu_before = {name: tree_cpu(pid) for name, pid in parts.items()}
        bench_before, machine_before = own_cpu(), machine_busy()
        started = time.time()
        upload_in_threads(d, BUCKET, keys, UPLOAD_THREADS)
        uploaded = time.time()
        seen = settle(d, before + files)
        cpu = {name: tree_cpu(pid) - cpu_before[name] for name, pid in parts.items()}
        cpu["this script (uploads, polling)"] = own_cpu() - bench_before
        machine_after = machine_busy()
        busy = (machine_after[0] - machine_before[0]) / (seen - started)
        idle(d)
    finally:
        for worker in workers:
            worker.stop()
    jobs = d.db.list_jobs(limit=1_000_000, bucket=BUCKET, prefix=f"{label}/burst/")
    check_each_once(d, keys, jobs)
    done = [j for j in jobs if j.status == "succeeded"]
    last = max(j.finished_at for j in done if j.finished_at is not None)
    steps = Counter(worker_pid(j.attempts[0].worker) for j in done)
    return Round(
        hosts=len(hosts), files=files, seconds=(last - datetime.fromtimestamp(started, UTC)).total_seconds(),
        seen=seen - started, uploads=uploaded - started, by_host=[steps[w.popen.pid] for w in workers],
        sources=dict(Counter(str(j.event.get("source")) for j in done)),
        skipped=sum(1 for j in jobs if j.status == "skipped"), cpu=cpu, busy=busy)


def check_each_once(d: Deployment, keys: list[str], jobs: list[Job]) -> None:
    """Each upload ran exactly once: one succeeded job, one attempt, one output, one object in the store.

    A job ``skipped`` without a run is allowed beside it (versitygw under
    load sends a notification naming another upload's key: its etag does not
    match, so nothing runs; the round counts them).
    """
    problems = []
    by_key: dict[str, list[Job]] = {}
    for job in jobs:
        by_key.setdefault(job.key, []).append(job)
    for key in keys:
        found = by_key.get(key, [])
        succeeded = [j for j in found if j.status == "succeeded"]
        ran = [a for j in found for a in j.attempts if a.status != "skipped"]
        if len(succeeded) != 1 or len(ran) != 1 or len(succeeded[0].outputs) != 1:
            problems.append(f"{key}: jobs {[j.status for j in found]}, "
                            f"attempts {[a.status for j in found for a in j.attempts]}")
    stored = Counter(obj.object_name.rsplit("/", 1)[0] for obj in
                     d.client.list_objects(OUTPUT_BUCKET, prefix=keys[0].rsplit("/", 1)[0] + "/", recursive=True))
    if sorted(stored) != sorted(keys) or set(stored.values()) != {1}:
        problems.append(f"{len(stored)} of {len(keys)} uploads have outputs in the store, "
                        f"{sum(1 for n in stored.values() if n > 1)} more than one")
    if problems:
        raise AssertionError(f"not every upload ran exactly once ({len(problems)} problems): {problems[:5]}")


# --- the whole run -------------------------------------------------------------------------


def run(tmp: Path, files: int, seconds: float, concurrency: int, rounds: int) -> list[Round]:
    results: list[Round] = []
    with lab(hosts=2) as net, redis_server(also_listen=[net.service_address]) as redis_url, \
            postgres_server(also_listen=[net.service_address]) as database_url:
        here, there = "127.0.0.1", net.service_address
        with deployment(tmp, redis_url=redis_url.replace(here, there),
                        database_url=database_url.replace(here, there), pipelines=[],
                        address=there, also_listen=[there], buckets=[BUCKET, OUTPUT_BUCKET],
                        reconcile={"min_interval": 2.0, "interval": 5.0},
                        # versitygw has no STS to give the function keys of its own
                        functions={"credentials": "shared"}) as d:
            assert d.gw is not None
            # A pipeline may only name a deployed function, and deploying needs the store, which
            # `deployment` starts after the API: deploy, then restart the API with the pipeline.
            code = tmp / "function"
            code.mkdir()
            (code / "sleepy.py").write_text(HANDLER.format(seconds=seconds))
            fileproc(d.config, "functions", "deploy", str(code), "--name", FUNCTION, "--handler", "sleepy.handler")
            first_api = d.processes[0]
            first_api.stop()
            write_config(d.config, {**d.settings, "pipelines": [PIPELINE]})
            api = d.api("api-with-pipeline")
            reconciler = d.start("reconcile", ["reconcile"])
            roots = {"versitygw": versitygw_pid(d.gw.endpoint),
                     "redis": int(redis.Redis.from_url(redis_url).info("server")["process_id"]),
                     "postgresql": postmaster_pid(database_url),
                     "fileproc api": api.popen.pid, "fileproc reconcile": reconciler.popen.pid}
            plan = [n for r in range(rounds) for n in ((1, 2) if r % 2 == 0 else (2, 1))]
            for index, count in enumerate(plan):
                result = burst(d, net.hosts[:count], files, concurrency, f"r{index}-h{count}", roots)
                print(f"round {index + 1}/{len(plan)}: {count} host(s): {result.rate:.2f} files/s "
                      f"({result.seconds:.2f} s; steps per host {result.by_host})", flush=True)
                results.append(result)
    return results


def _sources(sources: dict[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in sorted(sources.items()))


def report(results: list[Round], files: int, seconds: float, concurrency: int) -> None:
    one = [r for r in results if r.hosts == 1]
    two = [r for r in results if r.hosts == 2]
    print(f"\n{files} uploads -> {files} results, a deployed function sleeping {seconds} s per step "
          f"(waits, does not compute: the 2 cores are not the limit), worker concurrency {concurrency} per host")
    print(f"ideal: {concurrency / seconds:.1f} files/s per host\n")
    header = (f"{'hosts':>5} {'files/s':>8} {'last result s':>14} {'poll saw s':>11} {'uploads s':>10} "
              f"{'steps per host':>15} {'job sources':>24} {'skipped':>8} {'machine busy':>13}")
    print(header)
    for r in results:
        print(f"{r.hosts:>5} {r.rate:>8.2f} {r.seconds:>14.2f} {r.seen:>11.2f} {r.uploads:>10.2f} "
              f"{'/'.join(map(str, r.by_host)):>15} {_sources(r.sources):>24} {r.skipped:>8} "
              f"{r.busy:>8.2f} cores")
    print("\nCPU ms per file during the burst (median over rounds):")
    names = list(results[0].cpu)
    for group, rows in (("1 host", one), ("2 hosts", two)):
        parts = {n: statistics.median(r.cpu.get(n, 0.0) for r in rows) * 1000 / files for n in names}
        workers = sum(statistics.median(r.cpu.get(n, 0.0) for r in rows) for n in
                      {k for r in rows for k in r.cpu if k.startswith("worker on")}) * 1000 / files
        shown = ", ".join(f"{n} {v:.1f}" for n, v in parts.items() if not n.startswith("worker on"))
        print(f"  {group}: {shown}, workers (with their runners) {workers:.1f}")
    ratios = [b.rate / a.rate for a, b in zip(one, two, strict=False)]
    median_one, median_two = statistics.median(r.rate for r in one), statistics.median(r.rate for r in two)
    print(f"\none host {median_one:.2f} files/s (runs {', '.join(f'{r.rate:.2f}' for r in one)}), "
          f"two hosts {median_two:.2f} files/s (runs {', '.join(f'{r.rate:.2f}' for r in two)})")
    print(f"two hosts / one host: {median_two / median_one:.2f} (medians); per pair of rounds "
          f"{', '.join(f'{x:.2f}' for x in ratios)} (goal: >= 1.8)")
    print(f"every upload ran exactly once in every round ({len(results)} rounds, {len(results) * files} uploads)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=120, help="uploads in each burst")
    parser.add_argument("--seconds", type=float, default=0.2, help="how long each step sleeps")
    parser.add_argument("--concurrency", type=int, default=1, help="steps each worker runs at once")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each (one host, two hosts)")
    args = parser.parse_args()
    import pytest

    try:
        with tempfile.TemporaryDirectory(prefix="fileproc-bench-scale-") as tmp:
            results = run(Path(tmp), args.files, args.seconds, args.concurrency, args.rounds)
    except pytest.skip.Exception as exc:  # tests/servers.py and tests/netns.py say what is missing this way
        sys.exit(f"cannot run: {exc.msg}")
    report(results, args.files, args.seconds, args.concurrency)


if __name__ == "__main__":
    main()
