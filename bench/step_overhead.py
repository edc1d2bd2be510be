"""What fileproc adds around a function: run_step vs calling the handler directly.

Both sides run the same no-op handler on the same small objects, in this one
process: the baseline calls ``handler(event, context)``; run_step adds the
claim, the HEAD, the forked child with its limits, and the recorded attempt,
outputs and usage (SQLite in a temp dir, local storage). No broker: that is
Celery's own cost, measured by Celery.

    python -m bench.step_overhead [--jobs 200]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from fileproc import dispatch, function
from fileproc.config import load_settings
from fileproc.events import ObjectEvent
from fileproc.runtime.runner import run_step
from fileproc.service import Service


@function("bench-noop", timeout=30)
def noop(event, context):  # type: ignore[no-untyped-def]
    context.output.put("out.txt", b"ok")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "fileproc.toml"
        config.write_text(
            f'data_dir = "{tmp}/data"\n[[pipelines]]\nname = "b"\nmatch = {{ bucket = "inbox" }}\n'
            'steps = [{ function = "bench-noop" }]\noutput = { bucket = "outbox" }\n'
        )
        service = Service(load_settings(config, env={}))
        service.prepare_buckets()
        jobs = []
        for n in range(args.jobs):
            info = service.storage.put("inbox", f"obj-{n}.txt", b"x" * 1024)
            (item,) = dispatch.submit(service, ObjectEvent("inbox", info.key, size=info.size, etag=info.etag),
                                      send=False)
            jobs.append(item.job.id)

        from tests.helpers import invocation  # the same context a handler gets, built directly

        direct = []
        for n in range(args.jobs):
            event, context = invocation(service.storage, "inbox", f"obj-{n}.txt", Path(tmp) / "scratch",
                                        function_name="bench-noop")
            started = time.perf_counter()
            noop(event, context)
            direct.append(time.perf_counter() - started)
        full = []
        for job_id in jobs:
            started = time.perf_counter()
            assert run_step(service, job_id, 0, "bench").status == "succeeded"
            full.append(time.perf_counter() - started)

    base, ours = statistics.median(direct) * 1000, statistics.median(full) * 1000
    print(f"{'':24}{'median ms':>10}{'p95 ms':>10}")
    print(f"{'handler called directly':24}{base:>10.2f}{sorted(direct)[int(len(direct) * .95)] * 1000:>10.2f}")
    print(f"{'run_step (fork, DB)':24}{ours:>10.2f}{sorted(full)[int(len(full) * .95)] * 1000:>10.2f}")
    print(f"overhead per step: {ours - base:.2f} ms ({ours / base:.0f}x a no-op handler)")


if __name__ == "__main__":
    main()
