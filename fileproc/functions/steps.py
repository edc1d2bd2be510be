"""One step as the runtime and every kind of function share it: what a runner is asked, and what it reports.

Plain, picklable data: a :class:`StepRequest` crosses into a warm runner (a
fork of the worker, or a fresh interpreter); a :class:`ChildResult` is what
the worker learns back. :class:`RunnerStart` is how a kind of function has
its runners started (:meth:`fileproc.functions.kinds.FunctionKind.start`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fileproc.functions.batches import RecordBatch
from fileproc.storage import ObjectInfo


@dataclass(frozen=True)
class StepRequest:
    """What a runner needs to run one step: picklable, so it can cross into a warm runner."""

    request_id: str
    pipeline: str
    step_index: int
    event: dict[str, Any]
    source: ObjectInfo | None  # the object as it is now (None for a removal event)
    timeout: float
    memory_mb: int
    scratch_dir: str  # the step's private folder, removed when it ends
    payload: dict[str, Any] | RecordBatch | None = None  # the handler's event when it is not an object's
    # The object is to be checked before the handler runs (still there, still the notified version, not
    # the pipeline's own output): with the runner's one conditional read, or a HEAD by the worker for a
    # runner that reads through its own client (fileproc.runtime.invoke.open_source / head_source).
    check_source: bool = False


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
    not_run: bool = False  # chained behind a step that failed (or ended its runner): never started


@dataclass(frozen=True)
class RunnerStart:
    """How the runner of one step starts, and what it is sent.

    A forked runner (``spawn`` None) runs ``work(payload)`` for each step,
    after ``warm()`` once when new; a spawned one (``spawn``: a
    :class:`fileproc.runtime.pool.Spawn`) is a fresh interpreter that gets
    ``payload`` as plain data.
    """

    payload: Any
    work: Callable[[Any], Any] | None = None
    warm: Callable[[], None] | None = None
    spawn: Any = None


def failed_start(error: Exception, kind: str) -> ChildResult:
    """The result of a step whose runner could not be started (its package would not install, say)."""
    return ChildResult(True, value={"error": {"kind": kind, "type": type(error).__name__, "message": str(error),
                                              "traceback": None}, "result": None, "outputs": []})


__all__ = ["ChildResult", "RunnerStart", "StepRequest", "failed_start"]
