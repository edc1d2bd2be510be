"""Which CPUs a worker's threads and runners run on: a process's stream threads kept on one, runners on any.

The threads of a stream's poller (the poller's, its lanes', its recorder's)
share the interpreter lock and hand it to one another a few times per batch.
Left to the scheduler they spread over the CPUs, and each hand-off wakes a
thread on another CPU: on a virtual machine, an exit to the hypervisor.
Kept on one CPU of the process's (:func:`keep_on_one`), they hand it off in
place: on a 2-CPU VM a stream consumed 0.76-1.01 of the plain loop's
records/s against 0.53-0.79 spread (bench/streams, the embedded part;
bench/README.md). Only one of them runs Python at a time anyway.

A process started from such a thread would inherit its CPU: a runner is
given all of the process's CPUs back as it starts (:func:`free`), so the
kernel runs it beside its worker, not behind it.
"""

from __future__ import annotations

import contextlib
import os

ALL: frozenset[int] = frozenset(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else frozenset()
"""The CPUs this process may use (as it was started: ``taskset``, a container's cpuset)."""


def streams_cpu() -> int | None:
    """The CPU this process's stream threads share (None: one CPU only, nothing to choose). Processes of one
    host take different ones, by their pid."""
    if len(ALL) < 2:
        return None
    cpus = sorted(ALL)
    return cpus[os.getpid() % len(cpus)]


def keep_on_one(thread_id: int | None, cpu: int | None) -> None:
    """Run the thread ``thread_id`` (a ``native_id``) on ``cpu`` only (nothing if either is None)."""
    if thread_id is None or cpu is None:
        return
    with contextlib.suppress(OSError):  # (gone already, or not allowed: it runs where the kernel puts it)
        os.sched_setaffinity(thread_id, {cpu})


def free(pid: int) -> None:
    """Let process ``pid`` (0: this one) run on any of this process's CPUs again."""
    if len(ALL) < 2:
        return
    with contextlib.suppress(OSError):
        os.sched_setaffinity(pid, ALL)


__all__ = ["ALL", "free", "keep_on_one", "streams_cpu"]
