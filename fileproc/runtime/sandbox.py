"""Run one step in a child process, under a time and memory limit.

The child is forked (cheap: the worker has already imported everything),
starts its own process group, so a timeout kills whatever the function
started too (ffmpeg, say), and dies with its parent (``PR_SET_PDEATHSIG``) so
a worker killed with ``kill -9`` leaves no orphan still writing outputs. Its
peak memory comes from the kernel's accounting (``wait4``), not from sampling.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import resource
import select
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fileproc.processes import die_with_parent


@dataclass(frozen=True)
class ChildResult:
    """How the child ended. ``value`` is what the callable returned."""

    ok: bool
    value: Any = None
    error_type: str | None = None
    error: str | None = None
    timed_out: bool = False
    duration_ms: int = 0
    peak_memory_kb: int = 0


def _limit_memory(memory_mb: int) -> None:
    # The child starts as a copy of the worker, so the limit is on top of what it already maps.
    try:
        with open("/proc/self/statm") as statm:
            baseline = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        baseline = 0
    limit = baseline + memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _child(target: Callable[[], Any], write_fd: int, memory_mb: int) -> None:
    os.setpgid(0, 0)
    die_with_parent()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_DFL)
    try:
        _limit_memory(memory_mb)
        payload: dict[str, Any] = {"ok": True, "value": target()}
    except MemoryError:
        payload = {"ok": False, "error_type": "MemoryError",
                   "error": f"the step needed more than its memory limit of {memory_mb} MB"}
    except BaseException as exc:  # everything is reported to the parent
        payload = {"ok": False, "error_type": type(exc).__name__, "error": str(exc) or type(exc).__name__}
    with os.fdopen(write_fd, "wb") as pipe:
        pipe.write(pickle.dumps(payload))


def run_in_child(target: Callable[[], Any], *, timeout: float, memory_mb: int) -> ChildResult:
    """Call ``target()`` in a forked child and say how it ended. ``target`` must return picklable data."""
    read_fd, write_fd = os.pipe()
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_fd)
        code = 0
        try:
            _child(target, write_fd, memory_mb)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write_fd)
    chunks: list[bytes] = []
    timed_out = False
    deadline = started + timeout
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            ready, _, _ = select.select([pipe], [], [], min(remaining, 1.0))
            if ready:
                chunk = pipe.read(1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
    # Whether it finished or not, nothing the step started outlives it.
    _kill_group(pid)
    _, status, usage = os.wait4(pid, 0)
    duration_ms = int((time.monotonic() - started) * 1000)
    peak = int(usage.ru_maxrss)
    if timed_out:
        return ChildResult(False, timed_out=True, error_type="StepTimeout",
                           error=f"timed out after {timeout:g} s", duration_ms=duration_ms, peak_memory_kb=peak)
    if not chunks:
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        reason = f"killed by {signal.Signals(sig).name}" if sig else f"exited with status {os.WEXITSTATUS(status)}"
        return ChildResult(False, error_type="StepCrashed", error=f"the step's process died ({reason})",
                           duration_ms=duration_ms, peak_memory_kb=peak)
    payload = pickle.loads(b"".join(chunks))
    return ChildResult(
        ok=payload["ok"], value=payload.get("value"), error_type=payload.get("error_type"),
        error=payload.get("error"), duration_ms=duration_ms, peak_memory_kb=peak,
    )


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
