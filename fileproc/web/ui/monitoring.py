"""A function's monitoring over 1 h, 24 h or 7 d, in slots, as the Functions page graphs it.

From its attempts (:func:`fileproc.state.function_activity.attempts_since`):
per slot, invocations (attempts that ran the handler), errors, throttles,
cold starts, the duration's 50th, 95th and 99th percentiles, and the most
executions that ran at once at any moment of the slot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from fileproc.state.function_activity import ERRORS, RAN, THROTTLED, AttemptPoint

WINDOWS = {"1h": (timedelta(hours=1), timedelta(minutes=5)), "24h": (timedelta(days=1), timedelta(hours=1)),
           "7d": (timedelta(days=7), timedelta(hours=6))}
"""Each window the page offers: its length and its slots' length."""


@dataclass
class Slot:
    start: datetime
    invocations: int = 0
    errors: int = 0
    throttles: int = 0
    cold_starts: int = 0
    concurrent: int = 0
    durations: list[int] = field(default_factory=list)

    def percentile(self, fraction: float) -> float | None:
        """The nearest-rank percentile of the slot's durations (ms), None without any."""
        if not self.durations:
            return None
        ordered = sorted(self.durations)
        return float(ordered[max(0, math.ceil(fraction * len(ordered)) - 1)])


@dataclass
class Monitoring:
    window: str
    since: datetime
    slots: list[Slot]

    @property
    def labels(self) -> list[str]:
        length = WINDOWS[self.window][1]
        fmt = "%H:%M" if length < timedelta(days=1) and self.window != "7d" else "%a %H:%M"
        return [f"{s.start.strftime(fmt)}–{(s.start + length).strftime('%H:%M')} UTC" for s in self.slots]

    def total(self, name: str) -> int:
        return sum(getattr(s, name) for s in self.slots)

    def series(self, name: str) -> list[float]:
        return [float(getattr(s, name)) for s in self.slots]

    def percentiles(self) -> dict[str, list[float | None]]:
        return {f"p{int(f * 100)}": [s.percentile(f) for s in self.slots] for f in (0.5, 0.95, 0.99)}

    @property
    def peak_concurrency(self) -> int:
        return max((s.concurrent for s in self.slots), default=0)


def monitoring(points: list[AttemptPoint], window: str, now: datetime | None = None) -> Monitoring:
    """``points`` (attempts of one function since the window's start) counted in the window's slots."""
    length, slot = WINDOWS[window]
    now = now or datetime.now(UTC)
    count = int(length / slot)
    # Slots end on a whole slot boundary after now, so they do not shift on every refresh.
    end = datetime.fromtimestamp(math.ceil(now.timestamp() / slot.total_seconds()) * slot.total_seconds(), UTC)
    start = end - count * slot
    slots = [Slot(start + i * slot) for i in range(count)]

    def index(at: datetime) -> int | None:
        found = int((at - start) / slot)
        return found if 0 <= found < count else None

    changes: list[tuple[datetime, int]] = []
    for point in points:
        i = index(point.started_at)
        if point.status in RAN:
            changes.append((point.started_at, 1))
            changes.append((point.finished_at or now, -1))
        if i is None:
            continue
        s = slots[i]
        if point.status == THROTTLED:
            s.throttles += 1
            continue
        if point.status not in RAN:
            continue
        s.invocations += 1
        s.errors += point.status in ERRORS
        s.cold_starts += bool(point.cold_start)
        if point.duration_ms is not None:
            s.durations.append(point.duration_ms)
    _concurrency(slots, slot, changes)
    return Monitoring(window, start, slots)


def _concurrency(slots: list[Slot], length: timedelta, changes: list[tuple[datetime, int]]) -> None:
    """Each slot's most executions at once: a sweep over every start (+1) and end (-1), ends first at a tie."""
    changes.sort(key=lambda c: (c[0], c[1]))
    running, at = 0, 0
    for slot in slots:
        top = running
        while at < len(changes) and changes[at][0] < slot.start + length:
            running += changes[at][1]
            if changes[at][0] >= slot.start:
                top = max(top, running)
            at += 1
        slot.concurrent = max(top, 0)


__all__ = ["WINDOWS", "Monitoring", "Slot", "monitoring"]
