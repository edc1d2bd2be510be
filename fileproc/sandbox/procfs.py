"""A runner's memory, read from ``/proc``: its size now, and its peak during one step.

Peak memory per step is the kernel's high-water mark (``VmHWM``), reset
before each step through ``/proc/self/clear_refs`` (:func:`reset_peak`).
Where there is no ``/proc``, readings are zeros.
"""

from __future__ import annotations

import contextlib
import os
import resource
from pathlib import Path

_MEMORY_FIELDS = {b"VmSize": "VmSize", b"VmRSS": "VmRSS", b"VmHWM": "VmHWM"}
_proc_fds: dict[str, int] = {}
_proc_pid = 0


def _proc_self(name: str, flags: int = os.O_RDONLY) -> int:
    """This process's ``/proc/self/NAME``, opened once: a step reads its memory twice, and a
    descriptor read with ``pread`` costs a tenth of opening the file each time."""
    global _proc_pid
    if _proc_pid != os.getpid():  # /proc/self is resolved when it is opened: each runner opens its own
        _proc_fds.clear()
        _proc_pid = os.getpid()
    fd = _proc_fds.get(name)
    if fd is None:
        fd = _proc_fds[name] = os.open(f"/proc/self/{name}", flags | os.O_CLOEXEC)
    return fd


def memory() -> dict[str, int]:
    """VmSize, VmRSS and VmHWM of this process, in kB (zeros where /proc is missing)."""
    found = dict.fromkeys(_MEMORY_FIELDS.values(), 0)
    try:
        status = os.pread(_proc_self("status"), 16384, 0)
    except OSError:
        return found
    for line in status.splitlines():
        name, _, value = line.partition(b":")
        if name in _MEMORY_FIELDS:
            found[_MEMORY_FIELDS[name]] = int(value.split()[0])
    return found


def reset_peak() -> None:
    """Start a new peak: the next :func:`memory` reading's VmHWM is the peak since now."""
    # Linux: writing 5 resets VmHWM to the current RSS.
    with contextlib.suppress(OSError):
        os.write(_proc_self("clear_refs", os.O_WRONLY), b"5")


def children_peak() -> int:
    """The highest peak RSS, in kB, of the children this process has reaped so far."""
    return int(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)


def peak(after: dict[str, int], children_before: int) -> int:
    """A step's peak RSS in kB: this process's (``after``, read when the step ended), or a process it
    started if that one peaked higher (``children_before``: :func:`children_peak` when it began)."""
    found = after["VmHWM"] or int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    children = int(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return max(found, children) if children > children_before else found


def high_water_mark(pid: int) -> int:
    """VmHWM of a running process, in kB (0 if it cannot be read)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


__all__ = ["children_peak", "high_water_mark", "memory", "peak", "reset_peak"]
