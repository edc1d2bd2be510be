"""Kinds of function, and what each does around one step: the seam :func:`~fileproc.runtime.runner.run_step` calls.

A :class:`~fileproc.functions.FunctionSpec` names its kind (``spec.kind``).
The composition root (:mod:`fileproc.app`) registers one
:class:`FunctionKind` per name with the service's function resolver:
``registered`` (the built-ins and ``functions.paths``: :mod:`fileproc.runtime.kinds`)
and ``deployed`` (``fileproc functions deploy``: :mod:`fileproc.serverless.stepping`).
``run_step`` asks the kind how to start a runner and the step's
:class:`StepPolicy` what to do at its ends; it never asks which kind it has.
The next kinds (a batch of stream records, a scheduled event) plug in here.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from fileproc.functions import FunctionSpec
    from fileproc.functions.steps import ChildResult, RunnerStart, StepRequest
    from fileproc.state import Job

MAX_BACKOFF_SECONDS = 300.0


def backoff(failures: int, first: float = 2.0) -> float:
    """Seconds before retry number ``failures``: ``first``, doubled each time, up to 5 minutes, with jitter."""
    return min(MAX_BACKOFF_SECONDS, first * 2.0 ** (failures - 1) * random.uniform(0.8, 1.2))


class StepPolicy:
    """What a kind of function does at the ends of one of its steps; these defaults are a built-in's.

    An implementation MAY override each method; each SHALL be quick and
    SHALL NOT raise for a step that ran (what it adds to the step's end is
    committed in the step's one finishing transaction).
    """

    def too_old(self) -> str | None:
        """Why the step is dropped unrun for its event's age (None: it runs)."""
        return None

    def retry_delay(self, failures: int) -> float:
        """Seconds before retry number ``failures``."""
        return backoff(failures)

    def ended(self, outcome: str, condition: str | None, result: Any, failures: int) -> dict[str, Any]:
        """What the step's end records besides its outcome (a dead letter, a delivery owed), as StepEnd fields.

        ``outcome``: succeeded, next, failed, skipped or retry; ``condition``
        Lambda's name for why it failed (``EventAgeExceeded``...); ``result``
        what the handler returned.
        """
        return {}

    def committed(self) -> None:
        """Right after the step's end was committed (a delivery is sent now; the relay retries it)."""


class FunctionKind(Protocol):
    """One kind of function: how its runners start, and each step's policy.

    An implementation SHALL have a unique ``name`` (the value of
    ``FunctionSpec.kind``) and SHALL NOT import the runtime's callers
    (dispatch, intake, web, cli): it is handed the service when it is built.
    """

    name: str
    report_level: int
    """The level of a step's REPORT line in the worker's log (``logging.INFO``, or ``DEBUG`` to keep it quiet)."""
    step_scratch: bool
    """Whether its runners may use the step's scratch folder (``StepRequest.scratch_dir``), removed after each step."""

    def start(self, spec: FunctionSpec, request: StepRequest) -> RunnerStart:
        """How the runner of ``spec`` for ``request`` starts; FileprocError if it cannot (the step fails with it)."""
        ...

    def policy(self, spec: FunctionSpec, job: Job, request_id: str) -> StepPolicy:
        """The policy of one step of ``job``."""
        ...

    def unfinished(self, spec: FunctionSpec, result: ChildResult, request: StepRequest) -> ChildResult:
        """``result`` of a step its runner did not report (it timed out or died), with what the kind keeps of it."""
        ...

__all__ = ["MAX_BACKOFF_SECONDS", "FunctionKind", "StepPolicy", "backoff"]
