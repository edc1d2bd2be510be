"""Cold start and warm overhead of a deployed no-op user function, against calling it in-process.

A Lambda-style no-op handler (``def handler(event, context): return {"ok": True}``)
is deployed with ``fileproc functions deploy`` (SQLite and local storage in a
temp dir) and invoked through the runtime's :func:`~fileproc.runtime.runner.execute`:
the trip to the version's warm runner, the Lambda context and event, output
capture, the result coming back. The baseline calls the same handler in this
process. Cold: every warm runner is stopped first; the new runner is the
interpreter the pool started ahead (Lambda environment, private /tmp,
Landlock, module import), as in a worker where cold starts are not back to
back (``--pause`` between them). "No interpreter started ahead": the pool's
spare is stopped too, so the cold start also execs Python and imports the
runtime (the first deployed step of a worker, or two new runners at once).
The step's two state transactions are bench/step_overhead.py's.

    python -m bench.invoke [--warm 300] [--cold 30] [--pause 0.5]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import tempfile
import threading
import time
from pathlib import Path

from click.testing import CliRunner

from fileproc.app import build
from fileproc.cli import cli
from fileproc.config import load_settings
from fileproc.events import ObjectEvent
from fileproc.functions.steps import StepRequest
from fileproc.runtime.pool import pool
from fileproc.runtime.runner import execute

NOOP = "def handler(event, context):\n    return {'ok': True}\n"


def _stats(name: str, ms: list[float]) -> str:
    ms = sorted(ms)
    p99 = ms[min(len(ms) - 1, int(len(ms) * .99))]
    return f"{name:40}{statistics.median(ms):>10.3f}{p99:>10.3f}{len(ms):>6}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warm", type=int, default=300)
    parser.add_argument("--cold", type=int, default=30)
    parser.add_argument("--pause", type=float, default=0.5, help="seconds between two cold starts")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "noop.py").write_text(NOOP)
        config = root / "fileproc.toml"
        config.write_text(f'data_dir = "{root / "data"}"\n[[pipelines]]\nname = "p"\nmatch = {{ bucket = "inbox" }}\n'
                          'steps = [{ function = "noop" }]\noutput = { bucket = "out", key = "{key}/{name}" }\n')
        deployed = CliRunner().invoke(cli, ["--config", str(config), "functions", "deploy", str(root / "noop.py"),
                                            "--name", "noop", "--handler", "noop.handler"])
        assert deployed.exit_code == 0, deployed.output
        service = build(load_settings(config, env={}))
        service.prepare_buckets()
        info = service.storage.put("inbox", "a.txt", b"x")
        event = ObjectEvent("inbox", "a.txt", size=info.size, etag=info.etag)
        spec = service.spec(service.pipelines["p"].steps[0])

        def request(n: int) -> StepRequest:
            return StepRequest(f"bench-{n}", "p", 0, event.to_dict(), info, 30, 128, str(root / "scratch" / str(n)))

        # Baseline: the same handler, imported and called here.
        loaded = importlib.util.spec_from_file_location("noop_here", root / "noop.py")
        assert loaded is not None and loaded.loader is not None
        module = importlib.util.module_from_spec(loaded)
        loaded.loader.exec_module(module)
        record = {"Records": [event.to_record()]}
        direct = []
        for _ in range(args.warm):
            started = time.perf_counter()
            module.handler(record, None)
            direct.append((time.perf_counter() - started) * 1000)

        cancel = threading.Event()
        execute(service, request(0), cancel=cancel, spec=spec)  # the package is installed once, here
        warm, cold, exec_cold = [], [], []
        for n in range(args.warm):
            started = time.perf_counter()
            result = execute(service, request(n), cancel=cancel, spec=spec)
            warm.append((time.perf_counter() - started) * 1000)
            assert result.ok and not result.cold and result.value["result"] == {"ok": True}, result
        for n in range(args.cold):
            pool().close(spares=False)
            time.sleep(args.pause)  # the interpreter started ahead has imported the runtime meanwhile
            started = time.perf_counter()
            result = execute(service, request(n), cancel=cancel, spec=spec)
            cold.append((time.perf_counter() - started) * 1000)
            assert result.ok and result.cold, result
        for n in range(args.cold):
            pool().close()
            started = time.perf_counter()
            result = execute(service, request(n), cancel=cancel, spec=spec)
            exec_cold.append((time.perf_counter() - started) * 1000)
            assert result.ok and result.cold, result
        pool().close()
    base = statistics.median(direct)
    print(f"{'ms':40}{'median':>10}{'p99':>10}{'n':>6}")
    print(_stats("in-process call (baseline)", direct))
    print(_stats("warm invocation (runner trip)", warm))
    print(_stats("cold invocation (new runner)", cold))
    print(_stats("cold, no interpreter started ahead", exec_cold))
    print(f"\nwarm overhead p50: {statistics.median(warm) - base:.3f} ms (goal <= 2 ms; Lambda 1.5-3 ms)")
    print(f"cold start p50:    {statistics.median(cold) - base:.3f} ms (goal <= 50 ms; Lambda Python 74-102 ms)")


if __name__ == "__main__":
    main()
