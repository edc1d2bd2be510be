"""Load the CPU from other processes while a test runs (a busy machine, as in production).

::

    with cpu_load(processes=2):      # two busy loops at nice 0 until the block ends
        ...
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

BUSY_LOOP = "while True:\n    pass\n"


@contextlib.contextmanager
def cpu_load(processes: int = 2, nice: int = 0) -> Iterator[list[int]]:
    """Run ``processes`` busy loops at niceness ``nice`` for the block; yields their pids."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(processes):
            started.append(subprocess.Popen(
                [sys.executable, "-c", BUSY_LOOP], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True,
                preexec_fn=(lambda: os.nice(nice)) if nice else None))
        yield [p.pid for p in started]
    finally:
        for proc in started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds ``pid`` has used so far (to check the load really ran)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


__all__ = ["cpu_load", "cpu_seconds"]
