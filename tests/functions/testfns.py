"""User functions for the tests, loaded through ``functions.paths`` like anyone's."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from fileproc import PermanentError, TransientError, function


@function("slow", timeout=20, retries=2)
def slow(event, context):
    """Sleeps ``seconds`` (writing its pid to ``pidfile`` first), then writes one output."""
    if context.params.get("pidfile"):
        Path(context.params["pidfile"]).write_text(str(os.getpid()))
    time.sleep(float(context.params.get("seconds", 3)))
    with context.input.open() as src:
        data = src.read()
    context.output.put("done.txt", b"processed %d bytes" % len(data), content_type="text/plain")


@function("stall", timeout=600, retries=2)
def stall(event, context):
    """Sleeps ``first`` seconds on an object's first run and ``then`` seconds on later ones; one output.

    Runs are counted per object in the folder ``runs`` (a line per run: the
    pid), so a test can kill the first run mid-sleep and see the next finish.
    """
    runs = Path(context.params["runs"]) / context.input.key.replace("/", "%2F")
    with runs.open("a") as log:
        log.write(f"{os.getpid()}\n")
    count = len(runs.read_text().splitlines())
    time.sleep(float(context.params["first"] if count == 1 else context.params.get("then", 0)))
    context.output.put("done.txt", b"run %d" % count, content_type="text/plain")


@function("tiny", retries=2)
def tiny(event, context):
    """Writes one small output naming the input's size, without reading the input (a cheap step)."""
    context.output.put("size.txt", b"%d" % context.input.size, content_type="text/plain")


@function("hang", timeout=1.5, retries=0)
def hang(event, context):
    """Starts a child process and never finishes: the timeout must stop both."""
    child = subprocess.Popen(["sleep", "300"])
    Path(context.params["pidfile"]).write_text(str(child.pid))
    time.sleep(300)


@function("flaky", retries=3)
def flaky(event, context):
    """Fails with a transient error until ``succeed_after`` attempts were made (counted in a file)."""
    counter = Path(context.params["counter"])
    count = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(count))
    if count < int(context.params.get("succeed_after", 2)):
        raise TransientError(f"dependency not ready (attempt {count})")
    context.output.put("ok.txt", b"ok")


@function("hog", memory_mb=64, retries=0)
def hog(event, context):
    """Allocates far more than its memory limit."""
    blocks = [bytearray(32 * 1024 * 1024) for _ in range(16)]
    context.output.put("never.txt", bytes(len(blocks)))


_kept: list[bytearray] = []


@function("leaky", memory_mb=64, retries=0)
def leaky(event, context):
    """Keeps ``mb`` MB more after every call (a module-level cache that only grows); returns its pid."""
    _kept.append(bytearray(b"\1") * (int(context.params.get("mb", 24)) << 20))  # written: resident
    return {"pid": os.getpid(), "kept_mb": sum(len(b) for b in _kept) >> 20}


@function("describe")
def describe(event, context):
    """Writes what it was given: the Lambda-shaped event and context attributes."""
    import json

    record = event["Records"][0]
    info = {
        "key": record["s3"]["object"]["key"],
        "bucket": record["s3"]["bucket"]["name"],
        "event": record["eventName"],
        "request_id": context.aws_request_id,
        "function_name": context.function_name,
        "memory": context.memory_limit_in_mb,
        "remaining_ms": context.get_remaining_time_in_millis(),
        "params": context.params,
        "input_key": context.input.key,
        "path_exists": context.input.path.exists(),
    }
    context.output.put("describe.json", json.dumps(info).encode(), content_type="application/json")


class Unpicklable(Exception):
    """An exception that cannot cross a process boundary (it holds a lock)."""

    def __init__(self) -> None:
        import threading

        super().__init__("a failure carrying a lock")
        self.lock = threading.Lock()


@function("unpicklable", retries=0)
def unpicklable(event, context):
    raise Unpicklable()


@function("halfway", timeout=60, retries=0)
def halfway(event, context):
    """Reports 50 % done at 1.5x, then waits until the file ``release`` exists (a latch, not a timer)."""
    context.report_progress(50.0, speed=1.5)
    release = Path(context.params["release"])
    while not release.exists():
        time.sleep(0.05)
    context.output.put("done.txt", b"done")


@function("per-line", retries=0)
def per_line(event, context):
    """One output per line of the input, named after the line: what it makes depends on the content."""
    with context.input.open() as stream:
        lines = stream.read().decode().split()
    for line in lines:
        context.output.put(f"{line}.txt", line.encode())


@function("gate", retries=0)
def gate(event, context):
    """Fails (for good) until the file ``marker`` exists, then writes one output: a failure an admin can retry."""
    if not Path(context.params["marker"]).exists():
        raise PermanentError(f"waiting for {context.params['marker']}: not there yet")
    context.output.put("passed.txt", b"through the gate", content_type="text/plain")
