"""Pay only for what ran: each attempt's billed duration and Lambda's ``REPORT`` line.

Every attempt records its duration, the memory it was given (``memory_mb``)
and its billed duration (``billed_ms``: the duration rounded up to the next
millisecond, at least 1, as Lambda bills), for built-ins and deployed
functions alike. What that cost is summed by :mod:`fileproc.state.usage`
(``fileproc usage``).
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fileproc.functions.steps import ChildResult

log = logging.getLogger("fileproc.runtime.runner")  # REPORT lines sit with the worker's step lines


def billed_ms(seconds: float) -> int:
    """Lambda's billed duration: the duration rounded up to 1 ms (at least 1 ms)."""
    return max(1, math.ceil(round(seconds * 1000, 6)))


def report_line(request_id: str, seconds: float, memory_mb: int, peak_memory_kb: int,
                init_ms: float | None = None) -> str:
    """Lambda's ``REPORT`` line for one invocation."""
    line = (f"REPORT RequestId: {request_id}\tDuration: {seconds * 1000:.2f} ms\t"
            f"Billed Duration: {billed_ms(seconds)} ms\tMemory Size: {memory_mb} MB\t"
            f"Max Memory Used: {math.ceil(peak_memory_kb / 1024)} MB")
    return line + (f"\tInit Duration: {init_ms:.2f} ms" if init_ms is not None else "")


def attempt_metering(request_id: str, result: ChildResult | None, memory_mb: int, output: str | None,
                     function: str, *, level: int = logging.DEBUG) -> dict[str, Any]:
    """What an attempt records besides its duration: memory given, billed duration, and its log.

    The log is what the invocation printed (``output``), a note of processes
    it left running, and Lambda's REPORT line, which the worker logs too.
    """
    if result is None or not result.duration_s:
        return {}
    report = report_line(request_id, result.duration_s, memory_mb, result.peak_memory_kb)
    # A deployed function's REPORT goes to the worker's log as Lambda's goes to CloudWatch; a built-in's
    # only when debugging (the console shows one line per job, not per step).
    log.log(level, "%s (%s)", report, function)
    notes = ""
    if result.left_running:
        notes = (f"fileproc: the invocation left {result.left_running} process(es) running when it returned; "
                 "they were killed\n")
    return {"memory_mb": memory_mb, "billed_ms": billed_ms(result.duration_s),
            "log": f"{output or ''}{notes}{report}\n"}


__all__ = ["attempt_metering", "billed_ms", "report_line"]
