"""The webhook source: a notification body in, its events recorded as jobs before the answer.

:func:`receive` is the whole of one ``POST /events`` request after its token
is checked: it parses the body (:func:`~fileproc.intake.notifications.parse_body`;
a large one off the event loop), drops the events no pipeline can match
(counted, never written), completes from a HEAD those a notification left
incomplete (no eTag, size 0: :func:`fileproc.objects.complete`, off the event
loop), counts what it saw in the :class:`Counters`, and hands the rest to the
:class:`Committer`. It returns once they are committed: the caller answers
200 only then, so the sender's own retry covers any outage of ours.

The committer records many requests' events in one transaction (group
commit). Its one thread takes everything that arrived while the previous
transaction ran (up to ``max_batch`` events, waiting at most ``max_wait``
seconds for more), records it with one :func:`fileproc.dispatch.submit_many`
call, and wakes each waiting request. The new jobs' messages go to the broker
from a second thread, after the answers; one that does not go is sent later
by the outbox.

When the committer is behind by more than ``max_backlog`` events, or a
request's events are not committed within ``answer_timeout`` seconds (the
database is locked or gone), :func:`receive` raises :class:`Busy` (the API
answers 503 with ``Retry-After``): a store that retries does, and one that
does not has its object found by the reconciler, instead of the sender timing
out. Several API processes side by side are safe: they share only the
database, and a job is unique per (pipeline, bucket, key, version).

Example (the route adapts HTTP to this; a test calls it directly)::

    receipt = await receive(service, body, committer)
    receipt.jobs        # the ids of the jobs its events made or found
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from anyio import to_thread

from fileproc import dispatch
from fileproc.errors import FileprocError
from fileproc.events import ObjectEvent
from fileproc.intake.notifications import BadNotification, Parsed, parse_body
from fileproc.objects import candidates, complete, needs_head
from fileproc.service import Service

log = logging.getLogger(__name__)

PARSE_INLINE_BYTES = 64 * 1024
"""Bodies bigger than this are parsed off the event loop, so one big body never stalls the others."""


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
class Receipt:
    """What :func:`receive` made of one notification body."""

    recorded: int = 0
    """The events the body held (matched or not; its rejected records not counted)."""
    jobs: list[int] = field(default_factory=list)
    """The jobs of its matched events, created now or found (a duplicate)."""
    rejected: list[str] = field(default_factory=list)
    """Why each refused record was refused (an impossible key)."""
    test: bool = False
    """A store's test probe: no events."""


async def receive(service: Service, body: bytes, committer: Committer, *, raw_keys: bool = False) -> Receipt:
    """Record the events of one notification body; returns once they are committed.

    ``raw_keys``: the sender's keys are as they are, not URL-encoded (versitygw).
    Raises BadNotification (not a notification, or too many records:
    nothing recorded), Busy (not committed in time: the sender should retry)
    or DatabaseUnavailable. Counted in ``committer.counters``.
    """
    max_records = service.settings.api.max_records

    def parse() -> Parsed:
        return parse_body(body, raw_keys=raw_keys, max_records=max_records)

    try:
        parsed = await to_thread.run_sync(parse) if len(body) > PARSE_INLINE_BYTES else parse()
    except BadNotification as exc:
        log.warning("rejected a notification: %s", exc)
        raise
    if parsed.test:
        return Receipt(test=True)
    for reason in parsed.rejected:
        log.warning("rejected a notification record: %s", reason)
    counters = committer.counters
    pipelines = list(service.pipelines.values())
    # Events no pipeline can take are counted, never written; those a notification left
    # incomplete (no eTag, size 0) are completed from a HEAD, off the event loop.
    wanted: list[ObjectEvent] = []
    incomplete: list[ObjectEvent] = []
    for event in parsed.events:
        found = candidates(pipelines, event)
        if found:
            (incomplete if needs_head(event, pipelines, found) else wanted).append(event)
    counters.add(requests=1, received=len(parsed.events) + len(parsed.rejected), rejected=len(parsed.rejected),
                 unmatched=len(parsed.events) - len(wanted) - len(incomplete))
    if incomplete:
        completed = await to_thread.run_sync(complete, service.storage, pipelines, incomplete)
        counters.add(dropped=len(incomplete) - len(completed))
        wanted += completed
    results = await committer.record(wanted)
    return Receipt(len(parsed.events), [item.job.id for item in results], parsed.rejected)


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


__all__ = ["PARSE_INLINE_BYTES", "Busy", "Committer", "Counters", "Receipt", "receive"]
