"""A function run now on an event that is not an object's: Lambda's synchronous Invoke, for triggers.

A stream's poller (:mod:`fileproc.streams`), a schedule's tick
(:mod:`fileproc.schedules`) and a function URL's request call
:func:`invoke_event` and get what the handler returned or why it failed,
as Lambda's event source mappings, EventBridge and function URLs invoke a
function synchronously. The step runs in a warm runner of its function like
any other (limits, reserved concurrency, cold and warm starts, its log and
REPORT line) and is recorded once it ended (:mod:`fileproc.state.invocations`)
as a finished job of the one-step pipeline ``_event.FUNCTION`` (made up by
:class:`EventInvocations`, a source of the service's pipelines), so logs,
usage and the dashboard show it like any step. Retrying is the caller's
business: an invocation is never retried here, nor sent again by the outbox.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fileproc.errors import FileprocError
from fileproc.events import ObjectEvent
from fileproc.functions.batches import RecordBatch
from fileproc.functions.steps import ChildResult, StepRequest
from fileproc.rules import Match, Output, Pipeline, Step
from fileproc.runtime.metering import attempt_metering
from fileproc.runtime.runner import Execution, limits_for
from fileproc.runtime.slots import ReservedSlot
from fileproc.service import Service
from fileproc.state import AttemptStatus, JobStatus
from fileproc.state.invocations import Invoked

log = logging.getLogger(__name__)

PREFIX = "_event."


def pipeline_name(function: str) -> str:
    """The made-up pipeline whose jobs are ``function``'s invocations on events."""
    return PREFIX + function


class EventInvocations:
    """The one-step pipeline ``_event.FUNCTION`` of each function, by name (a source of the service's pipelines).

    What the handler writes through ``context.output`` goes to
    ``functions.bucket`` under ``invocations/FUNCTION/TRIGGER/WHAT/``.
    """

    def __init__(self, invocation_bucket: str) -> None:
        self._bucket = invocation_bucket
        self._made: dict[str, Pipeline] = {}  # (a pipeline is immutable: each is made once)

    def get(self, name: str) -> Pipeline | None:
        function = name.removeprefix(PREFIX)
        if not name.startswith(PREFIX) or not function:
            return None
        found = self._made.get(name)
        if found is None:
            found = self._made[name] = self._make(name, function)
        return found

    def _make(self, name: str, function: str) -> Pipeline:
        # Built without validation: the name is one no configured pipeline may take.
        return Pipeline.model_construct(
            name=name, match=Match.model_construct(bucket="", events=[]), steps=[Step(function=function, retries=0)],
            output=Output(bucket=self._bucket, key=f"invocations/{function}/{{bucket}}/{{key}}/{{name}}"))


@dataclass(frozen=True)
class Invocation:
    """How one invocation ended. ``error`` is Lambda's error object when the handler raised (or it timed out,
    ran out of memory or died); ``throttled`` when the function's reserved concurrency was all in use."""

    request_id: str
    ok: bool
    result: Any = None
    error: dict[str, Any] | None = None
    throttled: bool = False
    duration_ms: int = 0
    cold: bool | None = None
    job_id: int | None = None
    version: str | None = None
    not_run: bool = False  # chained behind an invocation that failed: never started (nothing to record)


def invoke_event(service: Service, function: str, event: dict[str, Any] | RecordBatch, *, trigger: str, what: str,
                 worker: str = "", summary: dict[str, Any] | None = None, request_id: str | None = None,
                 recorder: Recorder | None = None) -> Invocation:
    """Run ``function`` (NAME[:QUALIFIER]) on ``event`` now, in this process's warm runners; record it.

    ``event`` is the handler's event, or a stream's :class:`RecordBatch` (its
    event is built in the runner).

    ``trigger`` and ``what`` name it for people (the job's bucket and key:
    ``stream:clicks`` and ``shardId-000000000000/5-104``); ``summary`` is
    what the job keeps of the event (the default keeps nothing of it: a
    batch of records is not copied into the state database); ``request_id``
    is the invocation's (``context.aws_request_id``; a new UUID by default).
    What the handler returned is recorded up to :data:`RESULT_KEPT` bytes of
    JSON (past that, its size). With ``recorder``, an invocation that
    succeeded is recorded behind the caller (its ``job_id`` is then None);
    one that failed always now. FunctionNotFound if there is no such function.
    """
    return EventCall(service, function, event, trigger=trigger, what=what, worker=worker, summary=summary,
                     request_id=request_id, recorder=recorder).start().recorded()


class EventCall:
    """:func:`invoke_event` in parts, so a stream's lane can send its next batch's invocation behind the one
    running: made (resolved and ready to send), :meth:`start` (sent to a runner), :meth:`ended` (how it ended,
    at once), :meth:`recorded` (metered, logged and recorded)."""

    def __init__(self, service: Service, function: str, event: dict[str, Any] | RecordBatch, *, trigger: str,
                 what: str, worker: str = "", summary: dict[str, Any] | None = None, request_id: str | None = None,
                 recorder: Recorder | None = None) -> None:
        step = Step(function=function, retries=0)
        self.service, self.function, self.trigger, self.what = service, function, trigger, what
        self.worker, self.summary, self.recorder = worker, summary, recorder
        self.spec = service.spec(step)  # FunctionNotFound: the caller says where the name came from
        self.limits = limits_for(self.spec, step)
        self.request_id = request_id or new_request_id()
        placeholder = ObjectEvent(bucket=trigger, key=what, event_name="s3:ObjectCreated:Put", size=0, etag="",
                                  source="event")
        data_dir = str(service.settings.data_dir)
        scratch = _scratch_root(data_dir, "" if os.path.isabs(data_dir) else os.getcwd()) / \
            f"{os.getpid()}.{self.request_id}"
        request = StepRequest(self.request_id, pipeline_name(function), 0, placeholder.to_dict(), None,
                              self.limits.timeout, self.limits.memory_mb, str(scratch), payload=event)
        self.execution = Execution(service, request, cancel=threading.Event(), spec=self.spec)
        self.started = datetime.now(UTC)
        self._slot: ReservedSlot | None = None
        self._error: tuple[dict[str, Any] | None, str, str | None, str | None] = (None, "", None, None)
        self._ended: Invocation | None = None
        self._recorded: Invocation | None = None

    def start(self, *, after: EventCall | None = None, item_failures: bool = False) -> EventCall:
        """Send it to a warm runner of its function, if its reserved concurrency has room (else it is throttled).

        ``after``: sent now to that invocation's runner, to run the moment it ended if it succeeded
        (``item_failures``: a batch item failure in its result is a failure), else not at all (``not_run``)."""
        spec = self.spec
        self._slot = ReservedSlot(self.service.db, spec, self.request_id,
                                  self.limits.timeout + self.service.settings.runtime.lease_seconds)
        if not self._slot.take():
            self._slot = None
            self._ended = self._recorded = Invocation(
                self.request_id, False, throttled=True,
                error={"errorType": "TooManyRequestsException",
                       "errorMessage": f"all {spec.concurrency} of {spec.name!r}'s reserved concurrency in use"})
            return self
        self.started = datetime.now(UTC)
        try:
            self.execution.start(after=after.execution if after is not None else None, item_failures=item_failures)
        except BaseException:
            self._slot.give()
            raise
        return self

    def ended(self) -> Invocation:
        """How it ended (waiting for it): not yet recorded (no ``job_id``)."""
        if self._ended is None:
            assert self._slot is not None, "an invocation is started before it ends"
            try:
                result = self.execution.result()
            finally:
                self._slot.give()
            if result.not_run:
                self._ended = self._recorded = Invocation(self.request_id, False, not_run=True, error={
                    "errorType": "NotRun", "errorMessage": result.error or "not run"})
                return self._ended
            value = result.value or {}
            self._error = _failure(self.spec.name, result, self.limits.memory_mb)
            error = self._error[0]
            self._ended = Invocation(self.request_id, error is None, value.get("result") if error is None else None,
                                     error, duration_ms=result.duration_ms, cold=result.cold,
                                     version=None if self.spec.version == "$LATEST" else self.spec.version)
        return self._ended

    def recorded(self) -> Invocation:
        """How it ended, once metered, logged and recorded (behind the caller by its recorder, if it
        succeeded and has one)."""
        if self._recorded is not None:
            return self._recorded
        ended = self.ended()
        result = self.execution.result()
        spec, value = self.spec, result.value or {}
        error, attempt_status, reason, traceback = self._error
        metering = attempt_metering(self.request_id, result, self.limits.memory_mb, value.get("log"), spec.name,
                                    level=self.service.functions.kind(spec).report_level)
        done = Invoked(
            pipeline=pipeline_name(self.function), bucket=self.trigger, key=self.what, version=self.request_id,
            event=self.summary or {}, function=spec.name, worker=self.worker, started_at=self.started,
            job_status=JobStatus.FAILED if error else JobStatus.SUCCEEDED, attempt_status=attempt_status,
            error=reason, traceback=traceback, result=_kept(value.get("result")) if not error else None,
            duration_ms=result.duration_ms, peak_memory_kb=result.peak_memory_kb, cold_start=result.cold,
            recycled=result.recycled, version_ran=ended.version, **metering)
        if self.recorder is not None and error is None:
            self.recorder.put(done)
            self._recorded = ended
        else:
            job_id, _ = self.service.db.record_invocation(done)
            self._recorded = replace(ended, job_id=job_id)
        return self._recorded


GROUP_SECONDS = 0.01
"""A :class:`Recorder` writes at most one transaction this often (what waits meanwhile goes in the next)."""


class Recorder:
    """Invocations recorded behind their caller, many per transaction, in the order they were put.

    A stream's lane runs up to a thousand batches a second: a transaction of
    its own for each one's record cost a quarter of the lane's time, and one
    each :data:`GROUP_SECONDS` cuts the recorder's CPU per batch from 0.31 ms
    to 0.11-0.17 (bench/streams). The caller
    commits what an invocation consumed only once it is recorded
    (:meth:`after`), so a worker lost with records not yet written runs those
    batches again: nothing is committed unrecorded. A write that fails (the
    database away) is tried again until it succeeds or the recorder closes.
    """

    def __init__(self, service: Service, *, name: str) -> None:
        self._db = service.db
        self._queued: list[Invoked | Callable[[], None]] = []
        self._changed = threading.Condition()
        self._writing = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def thread_id(self) -> int | None:
        """The writer thread's ``native_id``."""
        return self._thread.native_id

    def put(self, done: Invoked) -> None:
        with self._changed:
            self._queue(done)

    def after(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once every invocation put before it is recorded (at once if none is waiting)."""
        with self._changed:
            if self._queued or self._writing:
                self._queue(callback)
                return
        callback()

    def _queue(self, item: Invoked | Callable[[], None]) -> None:
        # The writer is woken by the first item only: it takes what came meanwhile when its group is due, and
        # a wake-up per item cost a busy stream's worker a switch of threads per batch for nothing.
        self._queued.append(item)
        if len(self._queued) == 1:
            self._changed.notify_all()

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything put so far is recorded (False: not within ``timeout``)."""
        with self._changed:
            return self._changed.wait_for(lambda: not self._queued and not self._writing, timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Record what is waiting (within ``timeout``), then stop."""
        self.flush(timeout)
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self._thread.join(timeout)

    def _run(self) -> None:
        last = 0.0
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._queued or self._closed)
                # Group commit: at most one transaction each GROUP_SECONDS, with what came meanwhile.
                left = last + GROUP_SECONDS - time.monotonic()
                if left > 0 and not self._closed:
                    self._changed.wait_for(lambda: self._closed, left)
                last = time.monotonic()
                if self._closed:
                    if self._queued:
                        log.warning("%d invocation(s) not recorded: the recorder closed first (what they consumed "
                                    "is not committed)", sum(isinstance(i, Invoked) for i in self._queued))
                    return
                taken, self._queued, self._writing = self._queued, [], True
            if self._record([item for item in taken if isinstance(item, Invoked)]):
                for item in taken:
                    if not isinstance(item, Invoked):
                        item()
            with self._changed:
                self._writing = False
                self._changed.notify_all()

    def _record(self, invoked: list[Invoked]) -> bool:
        """Write ``invoked`` in one transaction, trying again while the database is away (False: closed first)."""
        pause = 0.1
        while invoked:
            try:
                self._db.record_invocations(invoked)
                return True
            except FileprocError as exc:
                if self._closed:
                    return False
                log.warning("%d invocation(s) not recorded yet: %s; trying again in %.1f s", len(invoked), exc,
                            pause)
                time.sleep(pause)
                pause = min(pause * 2, 5.0)
        return True


_ids = random.Random(os.urandom(32))


def new_request_id() -> str:
    """A new UUID4 for an invocation: from a generator seeded once, not a system call per id (whose release
    of the interpreter lock a busy stream's other threads take for as long as they like)."""
    return str(uuid.UUID(int=_ids.getrandbits(128), version=4))


@functools.lru_cache(maxsize=16)
def _scratch_root(data_dir: str, cwd: str) -> Path:
    # Resolved once (a path resolved is a system call per part, and a stream runs hundreds of batches a second);
    # what is made inside it then has no link to resolve.
    return (Path(data_dir) / "scratch").resolve()


RESULT_KEPT = 64 * 1024
"""The most of a handler's return value an invocation records (a function URL's answers can be large)."""


def _kept(result: Any) -> Any:
    size = len(json.dumps(result, default=str))
    return result if size <= RESULT_KEPT else {"fileproc": f"the result was {size} bytes of JSON: not kept"}


def _failure(function: str, result: ChildResult, memory_mb: int
             ) -> tuple[dict[str, Any] | None, str, str | None, str | None]:
    """(Lambda's error object, the attempt's status, the reason recorded, the traceback); no error: (None, ...)."""
    if result.timed_out:
        message = f"step {function!r} {result.error or 'timed out'}"
        return {"errorType": "Sandbox.Timedout", "errorMessage": message}, AttemptStatus.TIMED_OUT, message, None
    if not result.ok:
        memory = result.error_type == "MemoryError"
        message = (f"needed more than its memory limit of {memory_mb} MB" if memory
                   else result.error or "the step's process died")
        return ({"errorType": "Runtime.OutOfMemory" if memory else "Runtime.ExitError", "errorMessage": message},
                AttemptStatus.FAILED, f"step {function!r}: {message}", None)
    raised = (result.value or {}).get("error")
    if raised is not None:
        error = {"errorType": raised["type"], "errorMessage": raised["message"]}
        return error, AttemptStatus.FAILED, f"{raised['type']}: {raised['message']}", raised.get("traceback")
    return None, AttemptStatus.SUCCEEDED, None, None


__all__ = ["PREFIX", "EventCall", "EventInvocations", "Invocation", "Recorder", "invoke_event", "pipeline_name"]
