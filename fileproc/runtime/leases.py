"""The leases of the steps a worker process runs: renewed in the background, stopped in time.

A step's lease is renewed every fifth of it while the step runs. The step is
stopped (its ``lost`` event set, which kills it at once) when another attempt
owns the step, or when no renewal has got through for 80 % of a lease: the
database granted the lease no earlier than the moment this worker asked for
it, so by then (even on a slow machine) the step is stopped before its lease
can run out by the database's clock and another worker take it.

Two threads per process serve every lease it holds, started with the first:
a renewer, which talks to the database, and a clock, which keeps the
deadlines, so a renewal hanging on a dead connection cannot delay a stop.
Starting threads per step cost more than the bookkeeping of a short step.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

SAFETY = 0.8
"""The share of a lease after which a step whose lease was not renewed is stopped."""

TICK = 0.1
"""How often the clock looks at the deadlines, in seconds."""

Renew = Callable[[int, int, float], bool]
"""``renew(job_id, attempt_id, lease_seconds)``: False once another attempt owns the step."""


@dataclass(eq=False)
class Lease:
    """One step's lease, held by this process while the step runs."""

    renew: Renew
    job_id: int
    attempt_id: int
    seconds: float
    held_since: float  # monotonic: when this worker last asked for a lease it then got
    lost: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.renew_at = self.held_since + self.seconds / 5


class LeaseKeeper:
    """Renews and watches the leases of one process."""

    def __init__(self) -> None:
        self._leases: set[Lease] = set()
        self._changed = threading.Condition()
        self._started = False

    def add(self, lease: Lease) -> None:
        with self._changed:
            self._leases.add(lease)
            if not self._started:
                self._started = True
                for target, name in ((self._renew_loop, "renewer"), (self._clock_loop, "clock")):
                    threading.Thread(target=target, name=f"fileproc-lease-{name}", daemon=True).start()
            self._changed.notify_all()

    def remove(self, lease: Lease) -> None:
        """Stop keeping ``lease``; once this returns, ``lease.lost`` no longer changes."""
        with self._changed:
            self._leases.discard(lease)

    def _stop(self, lease: Lease, why: str) -> None:
        with self._changed:
            if lease not in self._leases:
                return
            self._leases.discard(lease)
            log.warning("job %s: %s; stopping the step (attempt %s)", lease.job_id, why, lease.attempt_id)
            lease.lost.set()

    def _clock_loop(self) -> None:
        while True:
            with self._changed:
                while not self._leases:
                    self._changed.wait()
                now = time.monotonic()
                expired = [lease for lease in self._leases if now - lease.held_since >= lease.seconds * SAFETY]
            for lease in expired:
                self._stop(lease, "no lease renewal got through in time (cut off from the database?)")
            time.sleep(TICK)

    def _renew_loop(self) -> None:
        while True:
            with self._changed:
                while True:
                    now = time.monotonic()
                    due = [lease for lease in self._leases if lease.renew_at <= now]
                    if due:
                        break
                    nearest = min((lease.renew_at for lease in self._leases), default=None)
                    self._changed.wait(None if nearest is None else nearest - now)
            for lease in due:
                self._renew(lease)

    def _renew(self, lease: Lease) -> None:
        from fileproc.state import DatabaseUnavailable

        asked = time.monotonic()
        lease.renew_at = asked + lease.seconds / 5
        try:
            renewed = lease.renew(lease.job_id, lease.attempt_id, lease.seconds)
        except DatabaseUnavailable as exc:
            log.warning("job %s: cannot renew the lease: %s", lease.job_id, exc)
            return
        if not renewed:
            self._stop(lease, "another attempt took the step over")
            return
        lease.held_since = max(lease.held_since, asked)


_keeper: LeaseKeeper | None = None
_keeper_lock = threading.Lock()


def _keeper_of_this_process() -> LeaseKeeper:
    global _keeper
    with _keeper_lock:
        if _keeper is None:
            _keeper = LeaseKeeper()
        return _keeper


def _forget_after_fork() -> None:
    # A forked process has none of its parent's threads (nor its leases): it starts its own.
    global _keeper, _keeper_lock
    _keeper, _keeper_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)


@contextmanager
def held(renew: Renew, job_id: int, attempt_id: int, seconds: float, *, asked_at: float) -> Iterator[Lease]:
    """Keep the step's lease while the block runs; ``lease.lost`` is set when the step must stop.

    ``asked_at`` is when (``time.monotonic()``) this worker asked for the lease.
    """
    lease = Lease(renew, job_id, attempt_id, seconds, asked_at)
    keeper = _keeper_of_this_process()
    keeper.add(lease)
    try:
        yield lease
    finally:
        keeper.remove(lease)


__all__ = ["SAFETY", "Lease", "held"]
