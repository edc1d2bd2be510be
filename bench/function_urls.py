"""Function URLs: requests/s and latency through a trivial deployed handler, against a plain ASGI app.

fileproc: the handler is deployed (``fileproc functions deploy``), given a
URL (``fileproc functions url --auth none``) and called at ``/fn/bench/``
on a real ``fileproc serve`` (SQLite, local storage, its worker idle
beside it): the API's routing, the URL's settings read from the state
database, Lambda's event, the trip to the function's warm runner (its own
interpreter, sandboxed) and back, the invocation recorded (job, attempt,
log, metering) and the answer mapped from the return value.

Plain: the same handler module imported by a minimal raw ASGI app (no
framework) under uvicorn with the same options (one process,
``--no-access-log``), called in-process with a small Lambda-like event and
its ``statusCode``/``body`` sent back. What a hand-written endpoint would cost.

The load is the same for both: C keep-alive HTTP/1.1 connections from this
process (raw asyncio streams, far cheaper than an HTTP library), each
sending the next request as soon as the last answer is read, for a number
of seconds after a warm-up. Both servers run one at a time on the same cores.

    python -m bench.function_urls [--seconds 10] [--connections 1,8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.servers import free_port

HANDLER = """\
def handler(event, context):
    return {"statusCode": 200, "headers": {"content-type": "text/plain"}, "body": "ok"}
"""

PLAIN_APP = """\
import json, time
from bench_handler import handler

class Context:
    function_name = "bench"
    aws_request_id = "plain"

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    event = {"version": "2.0", "rawPath": scope["path"], "rawQueryString": scope["query_string"].decode(),
             "headers": {k.decode(): v.decode() for k, v in scope["headers"]},
             "requestContext": {"http": {"method": scope["method"], "path": scope["path"]},
                                "timeEpoch": int(time.time() * 1000)},
             "body": body.decode(errors="replace"), "isBase64Encoded": False}
    result = handler(event, Context())
    answer = result["body"].encode()
    headers = [(k.lower().encode(), v.encode()) for k, v in result.get("headers", {}).items()]
    await send({"type": "http.response.start", "status": result["statusCode"],
                "headers": [*headers, (b"content-length", str(len(answer)).encode())]})
    await send({"type": "http.response.body", "body": answer})
"""


async def _connection(port: int, path: str, until: float, latencies: list[float], errors: list[str]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: bench\r\n\r\n".encode()
    try:
        while time.perf_counter() < until:
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            if status != 200:
                errors.append(str(status))
                continue
            latencies.append(time.perf_counter() - started)
    finally:
        writer.close()


async def _load(port: int, path: str, connections: int, seconds: float) -> tuple[list[float], list[str], float]:
    latencies: list[float] = []
    errors: list[str] = []
    started = time.perf_counter()
    await asyncio.gather(*(_connection(port, path, started + seconds, latencies, errors)
                           for _ in range(connections)))
    return latencies, errors, time.perf_counter() - started


def measure(port: int, path: str, connections: int, seconds: float, warmup: float) -> dict[str, float]:
    asyncio.run(_load(port, path, connections, warmup))  # warm runners, caches, connections
    latencies, errors, elapsed = asyncio.run(_load(port, path, connections, seconds))
    if errors:
        raise SystemExit(f"{len(errors)} requests to {path} failed: {sorted(set(errors))}")
    ms = sorted(1000 * t for t in latencies)
    return {"rps": len(ms) / elapsed, "p50": statistics.median(ms), "p99": ms[min(len(ms) - 1, int(len(ms) * .99))],
            "requests": len(ms)}


def _wait(port: int, path: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the server did not answer {path}:\n{log.read_text()[-3000:]}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        process.wait()


def _run(argv: list[str], path: str, port: int, log: Path, cwd: Path, loads: list[int], seconds: float,
         warmup: float) -> dict[int, dict[str, float]]:
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True,
                                   env={**os.environ, "PYTHONPATH": str(cwd)})
    try:
        _wait(port, path, process, log)
        return {c: measure(port, path, c, seconds, warmup) for c in loads}
    finally:
        _stop(process)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per load")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--connections", default="1,8", help="concurrent connections, one load each")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args()
    loads = [int(c) for c in args.connections.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "bench_handler.py").write_text(HANDLER)
        (root / "plain_app.py").write_text(PLAIN_APP)
        port = free_port()
        config = root / "fileproc.toml"
        config.write_text(f'data_dir = "{root / "data"}"\nlog_level = "WARNING"\n[api]\nport = {port}\n')
        fileproc = [sys.executable, "-m", "fileproc", "--config", str(config)]
        for step in (["functions", "deploy", str(root / "bench_handler.py"), "--name", "bench",
                      "--handler", "bench_handler.handler"], ["functions", "url", "bench", "--auth", "none"]):
            subprocess.run([*fileproc, *step], check=True, capture_output=True)
        ours = _run([*fileproc, "serve"], "/fn/bench/", port, root / "serve.log", Path.cwd(), loads, args.seconds,
                    args.warmup)
        plain_port = free_port()
        plain = _run([sys.executable, "-m", "uvicorn", "plain_app:app", "--port", str(plain_port), "--no-access-log",
                      "--log-level", "warning"], "/", plain_port, root / "plain.log", root, loads, args.seconds,
                     args.warmup)
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end; {args.seconds:g} s per load")
    print(f"{'':34}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}")
    for c in loads:
        print(f"fileproc /fn/bench/, {c} conn{'s' if c > 1 else '':<12}{ours[c]['rps']:>9.0f}{ours[c]['p50']:>9.2f}"
              f"{ours[c]['p99']:>9.2f}")
        print(f"plain ASGI app,      {c} conn{'s' if c > 1 else '':<12}{plain[c]['rps']:>9.0f}{plain[c]['p50']:>9.2f}"
              f"{plain[c]['p99']:>9.2f}")
        print(f"  ratio (fileproc / plain req/s): {ours[c]['rps'] / plain[c]['rps']:.3f}")
    if args.json:
        print(json.dumps({"fileproc": ours, "plain": plain}))


if __name__ == "__main__":
    main()
