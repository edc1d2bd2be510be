"""Memory of an idle ``fileproc serve`` (PSS), before and after 50 deployed functions ran once, and once they idled.

A real ``fileproc serve`` on the embedded default with the demo pipeline
(a temp data dir, ``runtime.idle_seconds`` set by ``--idle``) is measured
when it has settled; then ``--functions`` no-op Lambda-style handlers are
deployed (``fileproc functions deploy``, in this process) and each invoked
once through the API (``POST /functions/NAME/invoke``: the worker runs it
in a runner of its own); measured again; then again after
``idle_seconds`` (plus a margin) with nothing to do.

The figure is PSS (proportional set size: each page shared between
processes counted as its share), summed from ``/proc/PID/smaps_rollup``
over serve and every process below it (the broker, the worker, its pool,
the runners): RSS would count the pages forked processes share once per
process. Each process's own figure is printed too.

    python -m bench.idle_memory [--functions 50] [--idle 20]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.proctree import descendants

NOOP = "def handler(event, context):\n    return {'ok': True}\n"
TOKEN = "bench-admin-token-0123456789"


def pss_kb(pid: int) -> int:
    """The process's PSS in kB (0 if it is gone)."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def name_of(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    words = [w.decode(errors="replace") for w in argv if w]
    if "serve" in words:
        return "serve"
    if "worker" in words:
        return "worker"
    if words and "redis" in words[0]:
        return "redis-server"
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        comm = "?"
    return comm if comm not in ("python", "python3") else " ".join(words[:3])[:40]


def measure(root: int) -> tuple[int, list[tuple[int, str, int]]]:
    rows = [(pid, name_of(pid), pss_kb(pid)) for pid in descendants(root)]
    return sum(kb for _, _, kb in rows), rows


def settled(root: int, *, pause: float = 3.0, tolerance_kb: int = 2048, at_most: float = 120.0) -> int:
    """PSS once two readings ``pause`` apart differ by less than ``tolerance_kb`` (and the tree stopped changing)."""
    deadline = time.monotonic() + at_most
    total, rows = measure(root)
    while time.monotonic() < deadline:
        time.sleep(pause)
        again, rows_again = measure(root)
        if abs(again - total) < tolerance_kb and len(rows_again) == len(rows):
            return again
        total, rows = again, rows_again
    return total


def report(label: str, root: int) -> int:
    total = settled(root)
    _, rows = measure(root)
    print(f"\n{label}: {total / 1024:.1f} MB PSS in {len(rows)} processes")
    for pid, name, kb in sorted(rows, key=lambda r: -r[2]):
        print(f"    {kb / 1024:7.1f} MB  {pid:>7}  {name}")
    return total


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def call(port: int, method: str, path: str, body: dict[str, object] | None = None, timeout: float = 60) -> object:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                     headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        return json.loads(answer.read() or b"null")


def wait_up(port: int, process: subprocess.Popen[bytes], at_most: float = 120.0) -> None:
    deadline = time.monotonic() + at_most
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"fileproc serve exited with {process.returncode}")
        try:
            call(port, "GET", "/healthz", timeout=2)
            return
        except OSError:
            time.sleep(0.3)
    raise SystemExit("fileproc serve did not answer /healthz")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--functions", type=int, default=50, help="deployed functions each invoked once")
    parser.add_argument("--idle", type=float, default=20.0, help="runtime.idle_seconds for the run")
    args = parser.parse_args()

    from click.testing import CliRunner

    from fileproc.cli import cli

    with tempfile.TemporaryDirectory(prefix="fileproc-idle-memory-") as tmp:
        root = Path(tmp)
        config = root / "fileproc.toml"  # no [[pipelines]]: the demo pipeline
        config.write_text(f'data_dir = "{root / "data"}"\n')
        (root / "fn").mkdir()
        (root / "fn" / "noop.py").write_text(NOOP)
        port = free_port()
        env = {**os.environ, "FILEPROC_API_ADMIN_TOKEN": TOKEN, "FILEPROC_RUNTIME_IDLE_SECONDS": str(args.idle),
               "FILEPROC_LOG_LEVEL": "WARNING"}
        log = (root / "serve.log").open("wb")
        serve = subprocess.Popen([sys.executable, "-m", "fileproc", "--config", str(config), "serve",
                                  "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_up(port, serve)
            time.sleep(5)  # the worker's pool forks after the API answers
            idle = report("idle", serve.pid)

            (root / "data" / "buckets" / "inbox").mkdir(parents=True, exist_ok=True)
            (root / "data" / "buckets" / "inbox" / "a.txt").write_text("x")
            started = time.monotonic()
            for n in range(args.functions):
                name = f"noop-{n:02d}"
                deployed = CliRunner().invoke(cli, ["--config", str(config), "functions", "deploy",
                                                    str(root / "fn"), "--name", name, "--handler", "noop.handler"])
                assert deployed.exit_code == 0, deployed.output
            deployed_in = time.monotonic() - started
            started = time.monotonic()
            for n in range(args.functions):
                answer = call(port, "POST", f"/functions/noop-{n:02d}/invoke", {"bucket": "inbox", "key": "a.txt"})
                assert isinstance(answer, dict) and answer.get("status") == "succeeded", answer
            print(f"\ndeployed {args.functions} functions in {deployed_in:.1f} s, "
                  f"invoked each once in {time.monotonic() - started:.1f} s")
            ran = report(f"after {args.functions} functions ran once", serve.pid)

            time.sleep(args.idle + 5)
            after = report(f"after idle_seconds ({args.idle:g} s) passed", serve.pid)
            print(f"\nPSS MB: idle {idle / 1024:.1f}; after {args.functions} functions ran {ran / 1024:.1f}; "
                  f"after idle_seconds {after / 1024:.1f} (goal <= 150 for the first and last)")
        finally:
            serve.send_signal(signal.SIGTERM)
            try:
                serve.wait(90)
            except subprocess.TimeoutExpired:
                serve.kill()
                serve.wait()
            log.close()


if __name__ == "__main__":
    main()
