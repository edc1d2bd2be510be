"""The scheduler: each enabled schedule's ticks, claimed across hosts and run once (see :mod:`fileproc.schedules`).

One thread per process sleeps until the next tick of any schedule (waking
at least every ``interval`` seconds, so a changed clock is noticed), then
for each schedule whose tick came tries to claim it
(:func:`fileproc.state.schedules.claim`): of all the hosts, the one whose
claim wins runs it, in one of the scheduler's run threads, so that a long
run delays no other schedule (EventBridge does not wait for the last run
either). The run threads live as long as the scheduler: a runner is tied
to the thread that started it (it dies with it, ``PR_SET_PDEATHSIG``), so a
thread per run would kill its warm runner, and the spare started ahead,
as it ended.

At start, each schedule catches up: the ticks since its last claimed one
(or since it was first seen with this expression) that nobody ran were
missed while no fileproc ran; the latest of them runs once, now, with a
WARNING, and the earlier ones are named and not run (EventBridge does not
backfill). A claimed tick whose run never finished (its host died) is
taken over once its claim's lease ran out. Nothing is skipped silently: a
tick that passed while this scheduler was held up (the state database
unreachable) and that no host claimed is logged too.

Wiring: ``scheduler = Scheduler(service).start()`` where a process starts
serving, ``scheduler.stop()`` where it stops. Tests pass ``now`` (a clock
they move) and a short ``interval``.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from fileproc.cron import Cron, Rate, parse
from fileproc.errors import ConfigError, FileprocError, FunctionNotFound
from fileproc.functions.aws import aws_region
from fileproc.rules import Step
from fileproc.runtime.direct import Invocation, invoke_event
from fileproc.runtime.runner import limits_for
from fileproc.schedules.events import iso, scheduled_event
from fileproc.state import schedules as ticks
from fileproc.state.schedules import Tick

if TYPE_CHECKING:
    from fileproc.mappings import Schedule
    from fileproc.service import Service

log = logging.getLogger(__name__)

LATE = timedelta(seconds=2)
"""A tick owed at start that is older than this was missed while fileproc was down (younger: just due)."""
THROTTLED_FOR = 60.0
"""Seconds a tick's run keeps trying while its function's reserved concurrency is all in use."""


def trigger(name: str) -> str:
    """The jobs' bucket of schedule ``name``'s runs (what ``fileproc jobs`` and ``logs`` show)."""
    return f"schedule:{name}"


@dataclass
class _Entry:
    schedule: Schedule
    expression: Rate | Cron
    caught_up: bool = False
    done: datetime | None = None  # the latest tick handled here: run, or found claimed by another host
    held: Tick | None = None  # another host's claim of that tick, while it has not finished


class Scheduler:
    """Runs the service's enabled schedules until stopped: one thread, and run threads (two per schedule)."""

    def __init__(self, service: Service, *, worker: str | None = None, now: Callable[[], datetime] | None = None,
                 interval: float = 5.0) -> None:
        self.service = service
        self.worker = worker or f"{socket.gethostname()}:{os.getpid()}"
        self._now = now or (lambda: datetime.now(UTC))
        self._interval = interval
        self._region = aws_region(service.settings)
        self._entries = [_Entry(s, parse(s.expression)) for s in service.settings.schedules if s.enabled]
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._runs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._run_threads: list[threading.Thread] = []
        self._in_flight = 0
        self._idle = threading.Condition()

    def start(self) -> Scheduler:
        """Start the thread (none when no schedule is enabled); returns self."""
        if self._entries and self._thread is None:
            for entry in self._entries:
                self._check_function(entry.schedule)
            log.info("scheduler %s: %s", self.worker, ", ".join(f"{e.schedule.name} {e.expression}"
                                                                for e in self._entries))
            self._thread = threading.Thread(target=self._loop, name="fileproc-scheduler", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop ticking and wait (at most ``timeout`` s in all) for the runs in flight to end."""
        self._stopping.set()
        deadline = time.monotonic() + timeout
        if self._thread is not None:
            self._thread.join(timeout)
        self.wait_for_runs(max(0.0, deadline - time.monotonic()))
        for _ in self._run_threads:
            self._runs.put(None)

    def wait_for_runs(self, timeout: float = 30.0) -> bool:
        """Wait until no run started by this scheduler is in flight; whether none is."""
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout)

    def run_now(self, name: str) -> Invocation:
        """Run schedule ``name`` once now, whatever its ticks (enabled or not): no tick is claimed.

        ConfigError if there is no such schedule; FunctionNotFound if its function is not there.
        """
        schedule = next((s for s in self.service.settings.schedules if s.name == name), None)
        if schedule is None:
            raise ConfigError(f"no schedule {name!r} in the configuration (see `fileproc schedules list`)")
        moment = self._now().astimezone(UTC).replace(microsecond=0)
        event = scheduled_event(schedule, moment, self._region, event_id=str(uuid.uuid4()))
        return self._invoke(schedule, event, f"{iso(moment)} (run now)")

    # -- the loop -------------------------------------------------------

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                wait = self.run_due()
            except Exception:  # the thread must not end: every schedule would stop without a word
                log.exception("scheduler: a pass failed; trying again in %g s", self._interval)
                wait = self._interval
            self._stopping.wait(wait)

    def run_due(self) -> float:
        """One pass: catch up, claim and start what is due; the seconds to wait before the next pass."""
        now = self._now()
        for entry in self._entries:
            try:
                if not entry.caught_up:
                    self._catch_up(entry, now)
                else:
                    self._tick(entry, now)
            except FileprocError as exc:  # the state database is unreachable: try again next pass
                log.warning("schedule %s: %s; trying again in %g s", entry.schedule.name, exc, self._interval)
        upcoming = [t for e in self._entries if (t := e.expression.next_after(now)) is not None]
        if not upcoming:
            return self._interval
        return max(0.005, min(self._interval, (min(upcoming) - now).total_seconds()))

    def _catch_up(self, entry: _Entry, now: datetime) -> None:
        """At start: run the latest tick owed since the last claimed one, once, and say it was missed."""
        name, expression = entry.schedule.name, entry.expression
        since = ticks.since(self.service.db, name, entry.schedule.expression, now)
        last = ticks.last_claimed(self.service.db, name)
        latest = expression.latest_at(now)
        if latest is not None and latest >= since:
            if last is None or last.tick < latest:
                self._claim(entry, latest, _missed(expression, max(since, last.tick) if last else since, latest, now))
            elif last.tick == latest and last.finished_at is None:  # its host may have died mid-run
                self._claim(entry, latest, None)
        entry.caught_up, entry.done = True, latest

    def _tick(self, entry: _Entry, now: datetime) -> None:
        """Claim and run the schedule's latest tick if it is new; take over a claim that died unfinished."""
        tick = entry.expression.latest_at(now)
        if tick is None or (entry.done is not None and tick <= entry.done):
            self._take_over(entry)
            return
        first = entry.expression.next_after(entry.done) if entry.done else None
        if first is not None and first < tick and ticks.find(self.service.db, entry.schedule.name, first) is None:
            self._claim(entry, tick, f"ticks from {iso(first)} passed without a run (this scheduler was held up: "
                                     f"the state database unreachable, or the process paused); running the "
                                     f"latest, {iso(tick)}, now")
        else:
            self._claim(entry, tick, None)
        entry.done = tick

    def _take_over(self, entry: _Entry) -> None:
        """The latest tick, claimed by another host: run it here if that claim's lease ran out before it ended."""
        held = entry.held
        if held is None or held.tick != entry.done or (held.lease_until and datetime.now(UTC) < held.lease_until):
            return  # (a lease is on the database's clock: SQLite's is this host's)
        current = ticks.find(self.service.db, held.schedule, held.tick)
        if current is None or current.finished_at is not None:
            entry.held = None
        else:
            self._claim(entry, held.tick, None)

    def _claim(self, entry: _Entry, tick: datetime, warning: str | None) -> None:
        """Claim ``tick`` and, if this host won it, start its run."""
        name = entry.schedule.name
        claimed = ticks.claim(self.service.db, name, tick, self.worker, self._lease(entry.schedule))
        if claimed is None:
            held = ticks.find(self.service.db, name, tick)
            entry.held = held if held is not None and held.finished_at is None else None
            return
        entry.held = None
        if claimed.runs > 1:
            log.warning("schedule %s: tick at %s was claimed by a host that stopped before its run ended; "
                        "running it again now", name, iso(tick))
        elif warning:
            log.warning("schedule %s: %s", name, warning)
        self._submit(lambda: self._run(entry.schedule, tick, claimed))

    def _submit(self, run: Callable[[], None]) -> None:
        """Hand ``run`` to a run thread (started on first use: two per schedule, so one may overlap the next)."""
        with self._idle:
            self._in_flight += 1
            if not self._run_threads:
                for number in range(min(16, 2 * len(self._entries))):
                    thread = threading.Thread(target=self._run_thread, name=f"fileproc-schedule-run-{number}",
                                              daemon=True)
                    thread.start()
                    self._run_threads.append(thread)
        self._runs.put(run)

    def _run_thread(self) -> None:
        while (run := self._runs.get()) is not None:
            try:
                run()
            finally:
                with self._idle:
                    self._in_flight -= 1
                    self._idle.notify_all()

    def _lease(self, schedule: Schedule) -> float:
        """How long a claim holds a tick: the longest its run may take, and the time to record it."""
        step = Step(function=schedule.function, retries=0)
        try:
            timeout = limits_for(self.service.spec(step), step).timeout
        except FunctionNotFound:
            timeout = 0
        return THROTTLED_FOR + timeout + self.service.settings.runtime.lease_seconds

    # -- one run --------------------------------------------------------

    def _run(self, schedule: Schedule, tick: datetime, claimed: Tick) -> None:
        """Run ``schedule``'s function on ``tick``'s event and record how it ended in the tick's claim."""
        ok, job_id = False, None
        try:
            invocation = self._invoke(schedule, scheduled_event(schedule, tick, self._region), iso(tick))
            ok, job_id = invocation.ok, invocation.job_id
        except FunctionNotFound as exc:
            log.error("schedule %s: tick at %s not run: %s", schedule.name, iso(tick), exc)
        except Exception:  # a thread's own: nobody else would see it
            log.exception("schedule %s: tick at %s failed to run", schedule.name, iso(tick))
        try:
            ticks.finish(self.service.db, claimed, ok=ok, job_id=job_id)
        except FileprocError as exc:
            log.error("schedule %s: tick at %s ran, but its end was not recorded: %s", schedule.name, iso(tick), exc)

    def _invoke(self, schedule: Schedule, event: dict[str, Any], what: str) -> Invocation:
        """One invocation, tried again for up to THROTTLED_FOR s while its function's concurrency is all in use."""
        deadline, delay = time.monotonic() + THROTTLED_FOR, 0.5
        while True:
            invocation = invoke_event(self.service, schedule.function, event, trigger=trigger(schedule.name),
                                      what=what, worker=self.worker, summary=event)
            if not invocation.throttled or time.monotonic() + delay > deadline or self._stopping.is_set():
                break
            self._stopping.wait(delay)
            delay = min(delay * 2, 10.0)
        _report(schedule, what, invocation)
        return invocation

    def _check_function(self, schedule: Schedule) -> None:
        try:
            self.service.spec(Step(function=schedule.function, retries=0))
        except FunctionNotFound as exc:
            log.error("schedule %s: %s; its ticks fail until it is deployed", schedule.name, exc)


def _missed(expression: Rate | Cron, after: datetime, latest: datetime, now: datetime) -> str | None:
    """What to say of the ticks owed at start, ``latest`` and those after ``after`` before it (None: just due)."""
    first = expression.next_after(after)
    earlier = first is not None and first < latest
    if now - latest > LATE:
        return (f"missed tick at {iso(latest)} while fileproc was down; running it now"
                + (f" (the earlier ones from {iso(first)} are not run: EventBridge does not backfill)"
                   if first is not None and earlier else ""))
    if first is not None and earlier:
        return (f"missed ticks from {iso(first)} while fileproc was down, not run (EventBridge does not "
                f"backfill); the tick at {iso(latest)} is due and runs now")
    return None


def _report(schedule: Schedule, what: str, invocation: Invocation) -> None:
    name, function = schedule.name, schedule.function
    if invocation.ok:
        log.info("schedule %s: %s ran %s in %d ms (job %s)", name, what, function, invocation.duration_ms,
                 invocation.job_id)
    elif invocation.throttled:
        log.warning("schedule %s: %s not run: %s (for %g s)", name, what, (invocation.error or {}).get("errorMessage"),
                    THROTTLED_FOR)
    else:
        error = invocation.error or {}
        log.warning("schedule %s: %s: %s failed (job %s): %s: %s", name, what, function, invocation.job_id,
                    error.get("errorType"), error.get("errorMessage"))


def overview(service: Service, now: datetime | None = None) -> list[dict[str, Any]]:
    """Each configured schedule: its expression, next tick, last claimed tick and last run (from its jobs)."""
    now = now or datetime.now(UTC)
    found = []
    for schedule in service.settings.schedules:
        upcoming = parse(schedule.expression).next_after(now) if schedule.enabled else None
        jobs = service.db.list_jobs(bucket=trigger(schedule.name), limit=1)
        last = ticks.last_claimed(service.db, schedule.name)
        found.append({
            "name": schedule.name, "function": schedule.function, "expression": schedule.expression,
            "enabled": schedule.enabled, "next": iso(upcoming) if upcoming else None,
            "last_run": {"job": jobs[0].id, "what": jobs[0].key, "status": jobs[0].status,
                         "started_at": iso(jobs[0].created_at), "error": jobs[0].error} if jobs else None,
            "last_tick": {"tick": iso(last.tick), "worker": last.worker, "runs": last.runs,
                          "finished": last.finished_at is not None, "ok": last.ok} if last else None,
        })
    return found


__all__ = ["LATE", "THROTTLED_FOR", "Scheduler", "overview", "trigger"]
