"""The leases of the steps a worker process runs: renewed in the background, stopped in time.

A step's lease is renewed every fifth of it while the step runs. The step is
stopped (its ``lost`` event set, which kills it at once) when another attempt
owns the step, or when no renewal has got through for 80 % of a lease: the
database granted the lease no earlier than the moment this worker asked for
it, so by then (even on a slow machine) the step is stopped before its lease
can run out by the database's clock and another worker take it.

Unless nobody can take it: when the database is down for everyone, not only
out of this worker's reach, a step that stopped would only start over once
it is back. So with a *witness* (:func:`watch_outages`: on Redis, whether any
fileproc process reached the database in the last few seconds) a lease not
renewed in time is spared while the witness answers that nobody reaches the
database, and its step goes on. Once somebody does again, the lease must be
renewed within 60 % of a lease or the step stops after all (the relays renew
leases that ran out in an outage before they take any step over, and a
renewal succeeds as long as the attempt owns the step). A worker that hears
no witness (cut off from everything) stops its steps as before.

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

Witness = Callable[[], bool]
"""``down_everywhere()``: True when nobody reaches the state database (so nobody can take a step over).
Asked from a thread of its own, at most every :data:`WITNESS_EVERY` seconds, while a lease is overdue."""

WITNESS_EVERY = 0.25
"""How often the witness is asked while a lease is overdue, in seconds."""
WITNESS_FRESH = 1.0
"""An answer of the witness older than this (it hangs: this host is cut off) counts as no answer."""
BACK = 0.6
"""The share of a lease a spared step has to get a renewal through once the database answers again."""

_witness: Witness | None = None


def watch_outages(witness: Witness | None) -> None:
    """Spare the leases of this process while ``witness()`` says the database is down everywhere."""
    global _witness
    _witness = witness


@dataclass(eq=False)
class Lease:
    """One step's lease, held by this process while the step runs."""

    renew: Renew
    job_id: int
    attempt_id: int
    seconds: float
    held_since: float  # monotonic: when this worker last asked for a lease it then got
    lost: threading.Event = field(default_factory=threading.Event)
    spared: bool = False  # past its deadline, kept because the database is down for everyone

    def __post_init__(self) -> None:
        self.renew_at = self.held_since + self.seconds / 5


class LeaseKeeper:
    """Renews and watches the leases of one process."""

    def __init__(self) -> None:
        self._leases: set[Lease] = set()
        self._changed = threading.Condition()
        self._started = False
        self._down_everywhere: tuple[bool, float] = (False, 0.0)  # the witness's last answer, and when

    def add(self, lease: Lease) -> None:
        with self._changed:
            self._leases.add(lease)
            if not self._started:
                self._started = True
                for target, name in ((self._renew_loop, "renewer"), (self._clock_loop, "clock"),
                                     (self._witness_loop, "witness")):
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
                down, answered = self._down_everywhere
                down = down and now - answered <= WITNESS_FRESH
                for lease in expired if down else ():
                    if not lease.spared:
                        log.warning("job %s: the state database is down for every worker (nobody can take the "
                                    "step over); the step goes on", lease.job_id)
                    lease.spared = True
                for lease in self._leases if not down else ():
                    if lease.spared:  # somebody reaches the database again: renew soon, or stop after all
                        lease.spared = False
                        lease.held_since = max(lease.held_since, now - lease.seconds * (SAFETY - BACK))
                if down:
                    expired = []
                else:
                    expired = [lease for lease in expired if now - lease.held_since >= lease.seconds * SAFETY]
            for lease in expired:
                self._stop(lease, "no lease renewal got through in time (cut off from the database?)")
            time.sleep(TICK)

    def _witness_loop(self) -> None:
        while True:
            with self._changed:
                while True:
                    now = time.monotonic()
                    # Asked from half a lease without a renewal on, so a fresh answer is there at the deadline.
                    if _witness is not None and any(now - lease.held_since >= lease.seconds * (SAFETY - 0.3)
                                                    for lease in self._leases):
                        break
                    self._down_everywhere = (False, 0.0)
                    self._changed.wait(TICK)
            witness = _witness
            try:
                down = witness is not None and bool(witness())
            except Exception as exc:  # no answer is an answer: the leases stop in time
                log.debug("the outage witness did not answer: %s", exc)
                down = False
            with self._changed:
                self._down_everywhere = (down, time.monotonic())
            time.sleep(WITNESS_EVERY)

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


def let_go(lease: Lease) -> None:
    """Stop keeping ``lease`` before its ``held`` block ends (its step's end is recorded)."""
    _keeper_of_this_process().remove(lease)


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


__all__ = ["SAFETY", "Lease", "Witness", "held", "let_go", "watch_outages"]
