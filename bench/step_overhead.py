"""What fileproc adds around a function: run_step vs calling the handler directly.

Both sides run the same no-op handler (it writes one 2-byte output) on the
same small objects, in this one process: the baseline calls
``handler(event, context)``; run_step adds the claim, the HEAD, the trip to
the function's warm runner (a process of its own, under its limits) and the
recorded attempt, outputs and usage (SQLite in a temp dir, local storage).
Cold starts (a new runner: fork, warm-up) are measured apart, by emptying
the pool of warm runners before each. No broker: that is Celery's own cost.

    python -m bench.step_overhead [--jobs 200] [--cold 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fileproc import dispatch
from fileproc.app import build
from fileproc.config import load_settings
from fileproc.events import ObjectEvent
from fileproc.runtime import runner

NOOP = '''
from fileproc import function


@function("bench-noop", timeout=30)
def noop(event, context):
    context.output.put("out.txt", b"ok")
'''


def _empty_pool() -> Callable[[], None] | None:
    """How to drop every warm runner (None before warm runners existed: every step was cold)."""
    try:
        from fileproc.runtime.pool import pool
    except ImportError:
        return None
    return pool().close


def _row(name: str, seconds: list[float]) -> str:
    ms = sorted(s * 1000 for s in seconds)
    return f"{name:34}{statistics.median(ms):>10.2f}{ms[int(len(ms) * .95)]:>10.2f}{len(ms):>6}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200, help="warm steps timed (default 200)")
    parser.add_argument("--cold", type=int, default=20, help="cold starts timed (default 20)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        functions = Path(tmp) / "functions"
        functions.mkdir()
        (functions / "bench_noop.py").write_text(NOOP)
        config = Path(tmp) / "fileproc.toml"
        config.write_text(
            f'data_dir = "{tmp}/data"\n[functions]\npaths = ["{functions}"]\n'
            '[[pipelines]]\nname = "b"\nmatch = { bucket = "inbox" }\n'
            'steps = [{ function = "bench-noop" }]\noutput = { bucket = "outbox" }\n'
        )
        service = build(load_settings(config, env={}))
        service.prepare_buckets()
        spec = service.spec(service.pipelines["b"].steps[0])
        warmup = 10
        total = warmup + args.jobs + args.cold
        jobs = []
        for n in range(total):
            info = service.storage.put("inbox", f"obj-{n}.txt", b"x" * 1024)
            (item,) = dispatch.submit(service, ObjectEvent("inbox", info.key, size=info.size, etag=info.etag),
                                      send=False)
            jobs.append(item.job.id)

        from tests.helpers import invocation  # the same context a handler gets, built directly

        direct = []
        for n in range(warmup + args.jobs):
            event, context = invocation(service.storage, "inbox", f"obj-{n}.txt", Path(tmp) / "scratch",
                                        function_name="bench-noop")
            started = time.perf_counter()
            spec.handler(event, context)
            direct.append(time.perf_counter() - started)
        direct = direct[warmup:]

        in_process: list[float] = []  # time in execute(): the trip to the step's process and back
        # execute() since warm runners; before them run_step called the one-shot run_in_child.
        name = "execute" if hasattr(runner, "execute") else "run_in_child"
        real_execute = getattr(runner, name)

        def execute(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return real_execute(*args, **kwargs)
            finally:
                in_process.append(time.perf_counter() - started)

        setattr(runner, name, execute)  # run_step looks it up at each call

        def timed(job_id: int) -> float:
            started = time.perf_counter()
            assert runner.run_step(service, job_id, 0, "bench").status == "succeeded"
            return time.perf_counter() - started

        for job_id in jobs[:warmup]:
            timed(job_id)
        in_process.clear()
        warm = [timed(job_id) for job_id in jobs[warmup:warmup + args.jobs]]
        warm_execute = list(in_process)
        empty = _empty_pool()
        cold = []
        for job_id in jobs[warmup + args.jobs:]:
            if empty is not None:
                empty()
            cold.append(timed(job_id))
        attempts = [a for job_id in jobs[warmup:warmup + args.jobs] for a in service.db.get_job(job_id).attempts]
        reused = sum(1 for a in attempts if getattr(a, "cold_start", None) is False)

    base, ours = statistics.median(direct) * 1000, statistics.median(warm) * 1000
    print(f"step_overhead: no-op handler, {args.jobs} warm steps, {args.cold} cold starts "
          f"(python {sys.version.split()[0]})")
    print(f"{'':34}{'median ms':>10}{'p95 ms':>10}{'n':>6}")
    print(_row("handler called directly", direct))
    print(_row("run_step, warm runner", warm))
    print(_row("run_step, cold start (new runner)", cold))
    print(_row("  of a warm step: in execute()", warm_execute))
    print(_row("  of a warm step: the rest", [w - e for w, e in zip(warm, warm_execute, strict=True)]))
    print(f"overhead per warm step: {ours - base:.2f} ms median over a direct call "
          f"({reused}/{len(attempts)} attempts recorded as warm reuses)")
    print(f"a cold start adds {statistics.median(cold) * 1000 - ours:.2f} ms over a warm step")


if __name__ == "__main__":
    main()
