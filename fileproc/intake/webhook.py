"""The webhook source: many requests' events recorded in one transaction (group commit).

``POST /events`` parses its body on the event loop, drops what no pipeline
can match (counted, never written), fills what a notification left out from a
HEAD, and hands the rest to the :class:`Committer`. The committer's one
thread takes everything that arrived while the previous transaction ran (up
to ``max_batch`` events, waiting at most ``max_wait`` seconds for more),
records it with one :func:`fileproc.dispatch.submit_many` call, and wakes
each request, which answers 200 only then. The new jobs' messages go to the
broker from a second thread, after the answers; one that does not go is sent
later by the outbox.

When the committer is behind by more than ``max_backlog`` events, or a
request's events are not committed within ``answer_timeout`` seconds (the
database is locked or gone), the request answers 503 with ``Retry-After``:
a store that retries does, and one that does not has its object found by the
reconciler, instead of the sender timing out. Several API processes side by
side are safe: they share only the database, and a job is unique per
(pipeline, bucket, key, version).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from fileproc import dispatch
from fileproc.errors import FileprocError
from fileproc.events import ObjectEvent
from fileproc.service import Service

log = logging.getLogger(__name__)


class Busy(FileprocError):
    """The events could not be recorded in time: the sender should retry (503)."""


@dataclass
class Counters:
    """What the receiver saw since it started (``GET /stats``)."""

    requests: int = 0
    received: int = 0
    recorded: int = 0
    unmatched: int = 0
    rejected: int = 0
    dropped: int = 0
    busy: int = 0
    too_large: int = 0
    batches: int = 0

    def add(self, **counts: int) -> None:
        # Two threads add (the event loop and the committer): a read-add-write each, under one
        # uncontended lock (no system call); the fields straight from the instance's dict.
        values = self.__dict__
        with _COUNTER_LOCK:
            for name, value in counts.items():
                values[name] += value

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


_COUNTER_LOCK = threading.Lock()


@dataclass
class _Waiting:
    events: Sequence[ObjectEvent]
    future: asyncio.Future[list[dispatch.Dispatched]]
    loop: asyncio.AbstractEventLoop


class Committer:
    """Records the events of all concurrent requests in shared transactions.

    Example (inside a request handler)::

        results = await committer.record(events)   # committed when this returns
    """

    name = "webhook"

    def __init__(self, service: Service, *, max_batch: int = 2000, max_wait: float = 0.002,
                 max_backlog: int = 20_000, answer_timeout: float = 2.0, counters: Counters | None = None) -> None:
        self.service = service
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.max_backlog = max_backlog
        self.answer_timeout = answer_timeout
        self.counters = counters or Counters()
        self._cond = threading.Condition()
        self._waiting: list[_Waiting] = []
        self._backlog = 0
        self._stopping = False
        self._sends: queue.SimpleQueue[list[dispatch.Dispatched] | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._commit_loop, name="fileproc-committer", daemon=True),
            threading.Thread(target=self._send_loop, name="fileproc-sender", daemon=True),
        ]

    # -- lifecycle --------------------------------------------------------

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Finish what is waiting (bounded), then end both threads."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        committer, sender = self._threads
        committer.join(5.0)
        self._sends.put(None)  # after the last batch: its messages go too
        sender.join(5.0)

    @property
    def backlog(self) -> int:
        """Events handed in and not yet committed."""
        return self._backlog

    # -- the request side (event loop) -----------------------------------

    async def record(self, events: Sequence[ObjectEvent]) -> list[dispatch.Dispatched]:
        """Commit ``events`` (with others'); their jobs, once committed.

        Raises Busy when the backlog is over its bound or the commit takes
        longer than ``answer_timeout``; DatabaseUnavailable when it failed.
        """
        if not events:
            return []
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[dispatch.Dispatched]] = loop.create_future()
        # Marks the outcome as seen even when the request gave up waiting (no "never retrieved" noise).
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        with self._cond:
            if self._stopping:
                raise Busy("the receiver is stopping")
            if self._backlog and self._backlog + len(events) > self.max_backlog:
                raise Busy(f"{self._backlog} events are waiting to be recorded; try again shortly")
            self._backlog += len(events)
            self._waiting.append(_Waiting(events, future, loop))
            self._cond.notify()
        # A request that gives up (answer_timeout) leaves its events in the batch, recorded all the
        # same, so the sender's retry finds them and adds nothing: the timer only settles this
        # request's future (the committer's answer then finds it done). A timer handle rather than
        # wait_for(shield(...)): half the event loop's work per request.
        timer = loop.call_later(self.answer_timeout, _give_up, future, self.answer_timeout)
        try:
            return await future
        finally:
            timer.cancel()

    # -- the committer thread ---------------------------------------------

    def _take_batch(self) -> list[_Waiting] | None:
        with self._cond:
            while not self._waiting:
                if self._stopping:
                    return None
                self._cond.wait()
            # Group commit: give requests arriving right now a moment to join.
            deadline = time.monotonic() + self.max_wait
            while sum(len(w.events) for w in self._waiting) < self.max_batch and not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch: list[_Waiting] = []
            count = 0
            while self._waiting and (not batch or count + len(self._waiting[0].events) <= self.max_batch):
                waiting = self._waiting.pop(0)
                batch.append(waiting)
                count += len(waiting.events)
            return batch

    def _commit_loop(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            events = [event for waiting in batch for event in waiting.events]
            try:
                results = dispatch.submit_many(self.service, events, send=False, completed=True)
            except Exception as exc:  # every waiting request must hear of it
                if not isinstance(exc, FileprocError):
                    log.exception("recording %d events failed", len(events))
                _answer(batch, [exc] * len(batch))
            else:
                self.counters.add(recorded=len(events), batches=1)
                by_object: dict[tuple[str, str, str], list[dispatch.Dispatched]] = {}
                for item in results:
                    by_object.setdefault((item.job.bucket, item.job.key, item.job.version), []).append(item)
                answers = []
                for waiting in batch:
                    keys = {(e.bucket, e.key, e.version) for e in waiting.events}
                    answers.append([item for key in keys for item in by_object.get(key, ())])
                _answer(batch, answers)
                if results:
                    self._sends.put(results)
            finally:
                with self._cond:
                    self._backlog -= len(events)

    # -- the sender thread ------------------------------------------------

    def _send_loop(self) -> None:
        while True:
            results = self._sends.get()
            if results is None:
                return
            # Take whatever else is waiting too: one pass over the broker for all of it.
            more: list[Any] = []
            while True:
                try:
                    extra = self._sends.get_nowait()
                except queue.Empty:
                    break
                if extra is None:
                    self._sends.put(None)
                    break
                more.extend(extra)
            unique = {item.job.id: item for item in [*results, *more] if item.created}
            try:
                dispatch.send_new(self.service, unique.values())
            except FileprocError as exc:  # marked sent: the outbox sends them after runtime.resend_after
                log.warning("sending %d new job(s) failed; the outbox will: %s", len(unique), exc)


def _answer(batch: list[_Waiting], answers: Sequence[Any]) -> None:
    """Settle each request's future (a result, or an exception) on its event loop: one wake-up per
    loop and batch, not one per request (each is a write to the loop's self-pipe, and a read)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any]]] = {}
    for waiting, answer in zip(batch, answers, strict=True):
        by_loop.setdefault(waiting.loop, []).append((waiting.future, answer))
    for loop, settled in by_loop.items():
        loop.call_soon_threadsafe(_settle, settled)


def _settle(settled: list[tuple[asyncio.Future[Any], Any]]) -> None:
    for future, answer in settled:
        if future.done():  # the request gave up (answer_timeout) or went away
            continue
        if isinstance(answer, BaseException):
            future.set_exception(answer)
        else:
            future.set_result(answer)


def _give_up(future: asyncio.Future[Any], timeout: float) -> None:
    if not future.done():
        future.set_exception(Busy(f"the state database did not record the events within {timeout:g} s"))


__all__ = ["Busy", "Committer", "Counters"]
