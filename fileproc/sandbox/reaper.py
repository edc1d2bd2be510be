"""Nothing a step started outlives it: the runner is its processes' subreaper, and kills what is left.

A step may start processes (ffmpeg, say) that daemonise or that it forgets
to wait for. With :func:`become_subreaper`, orphans of those become the
runner's children instead of init's, so :func:`reap_descendants` finds and
stops them all when the step ends.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    """Make this process the parent of its descendants' orphans (Linux; elsewhere a no-op)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def reap_descendants() -> int:
    """Kill whatever the finished step left running, and reap it; how many processes were killed."""
    killed: set[int] = set()
    if not _has_children():  # most steps start none: skip reading /proc
        return 0
    for _ in range(400):  # killing a child hands its own children to us: repeat until none is left
        children = _children()
        if not children:
            break
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
        if not _reap_exited():
            time.sleep(0.005)  # killed, not yet dead
    return len(killed)


def _children() -> list[int]:
    pids: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path("/proc/self/task").iterdir():
            pids += [int(p) for p in (task / "children").read_text().split()]
    return pids


def _has_children() -> bool:
    """Whether this process has children, alive or not (reaping one that ended, if any)."""
    try:
        os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return False
    return True


def _reap_exited() -> bool:
    """Reap every child that has ended; whether there was one."""
    reaped = False
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return reaped
        if pid == 0:
            return reaped
        reaped = True


__all__ = ["become_subreaper", "reap_descendants"]
