"""How a step's process ended: :class:`ChildResult`.

Steps run in warm runners (:mod:`fileproc.runtime.pool`): processes of their
own, in their own process group, under the step's time and memory limits,
reused for the next step of the same function. This is what the worker
learns from one of them about one step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ChildResult:
    """How the step's process ended. ``value`` is what the step's callable returned."""

    ok: bool
    value: Any = None
    error_type: str | None = None
    error: str | None = None
    timed_out: bool = False
    duration_ms: int = 0
    peak_memory_kb: int = 0  # the step's own peak RSS (the runner's high-water mark, reset per step)
    cancelled: bool = False  # stopped from outside (the step's lease was lost)
    cold: bool | None = None  # the runner process was new for this step
    recycled: str | None = None  # why the runner was replaced after this step (None: it was kept)
    runner_pid: int | None = None  # the process that ran the step
    left_running: int = 0  # processes the step started and left running when it returned (killed then)
    duration_s: float = 0.0  # duration_ms before rounding (billing rounds it up)
    output: str | None = None  # what a spawned runner wrote in a step it did not report (it died, or raised)
