"""``run_step``: one step of one job, from claim to recorded result.

The whole path in one place::

    start_step (transaction 1: claim, lease, attempt)
      -> run the handler in its own process, renewing the lease meanwhile; its runner first
         checks that the object is still the notified version, with the one conditional
         read the handler's input comes from (runtime/invoke.py: open_source)
    finish_step (transaction 2: attempt, outputs, usage, what becomes of the job)
      -> send the next step (or nothing: the outbox covers a lost send)

Plain functions, testable without a broker; the Celery task only calls
:func:`run_step`. Retries are not Celery retries: a failed step is queued
again in the state database with its backoff, and the outbox sends it when
it is due, so no delay ever sits in the broker past its visibility timeout.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fileproc.errors import FileprocError, FunctionNotFound, ObjectNotFound, StorageError, kind_of
from fileproc.events import ObjectEvent
from fileproc.functions import PROGRESS_FILE, FunctionSpec
from fileproc.functions.kinds import StepPolicy
from fileproc.functions.steps import ChildResult, StepRequest, failed_start
from fileproc.objects import event_for
from fileproc.rules import Step
from fileproc.runtime import leases, outbox
from fileproc.runtime.cleanup import Cleanup, remove_earlier_outputs
from fileproc.runtime.invoke import GONE, SUPERSEDED, SourceSkip, SourceSkipped, source_verdict
from fileproc.runtime.metering import attempt_metering
from fileproc.runtime.pool import Running, not_run, pool
from fileproc.runtime.slots import ReservedSlot
from fileproc.service import Service
from fileproc.state import AttemptStatus, DatabaseUnavailable, Job, JobStatus, Output, Send, StepEnd, StepStart
from fileproc.state.nudges import nudge
from fileproc.storage import ObjectInfo

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Outcome:
    """What became of one delivery of a step message."""

    status: str  # succeeded, failed, skipped, next (the next step is queued), retry, busy, stale, late
    detail: str = ""
    retry_in: float | None = None


@dataclass(frozen=True)
class Limits:
    timeout: float
    memory_mb: int
    retries: int


def limits_for(spec: FunctionSpec, step: Step) -> Limits:
    return Limits(
        timeout=step.timeout or spec.timeout,
        memory_mb=step.memory_mb or spec.memory_mb,
        retries=spec.retries if step.retries is None else step.retries,
    )


def run_step(service: Service, job_id: int, step_index: int, worker: str) -> Outcome:
    """Run step ``step_index`` of job ``job_id`` if it is still this step's turn."""
    lease = service.settings.runtime.lease_seconds
    asked_at = time.monotonic()
    started = service.db.start_step(job_id, step_index, worker, lease, function_of=service.function_name)
    if not isinstance(started, StepStart):
        # Finished, moved on, or held by a live attempt. A live holder's lease is watched
        # by the outbox, which sends the step again if the holder dies: drop this message.
        busy = started is not None and started.status == JobStatus.RUNNING and started.step_index == step_index
        return Outcome("busy" if busy else "stale", "another worker holds this step" if busy else "nothing to do")
    job, attempt_id = started.job, started.attempt_id
    request_id = f"{job_id}-{step_index}-{attempt_id}"
    pipeline = service.pipeline(job.pipeline)
    if pipeline is None or step_index >= len(pipeline.steps):
        service.db.end_job(job_id, JobStatus.FAILED, f"pipeline {job.pipeline!r} is no longer configured")
        return Outcome("failed", "pipeline gone")
    step = pipeline.steps[step_index]
    try:
        spec = service.spec(step)
    except FunctionNotFound as exc:  # a deployed function deleted since the job was queued
        return _Ender(service, job, step_index, attempt_id, step.function, Limits(0, 0, 0), started.failures,
                      StepPolicy()).fail(AttemptStatus.FAILED, str(exc), error=str(exc))
    limits = limits_for(spec, step)
    kind = service.functions.kind(spec)
    end = _Ender(service, job, step_index, attempt_id, spec.name, limits, started.failures,
                 kind.policy(spec, job, request_id), report_level=kind.report_level,
                 version=None if spec.version == "$LATEST" else spec.version)
    too_old = end.policy.too_old()
    if too_old:
        return end.fail(AttemptStatus.FAILED, too_old, error=too_old, condition="EventAgeExceeded")

    if started.lost and started.failures > limits.retries:
        return end.fail("failed", f"gave up: the worker running step {spec.name!r} was lost {started.lost} times "
                                  "(killed, crashed, out of memory or cut off)")
    event = job.object_event
    if pipeline.removes_outputs and event.is_removal:  # its source is gone: so go its outputs
        try:
            return end.cleaned(remove_earlier_outputs(service, job))
        except StorageError as exc:
            return end.failure(kind_of(exc), str(exc), ChildResult(False))
    # Named after this worker's pid, so a worker starting later knows whose folder it was.
    scratch = service.settings.data_dir / "scratch" / f"{os.getpid()}.{request_id}"
    # An uploaded object is checked before its handler runs (gone, superseded, our own output):
    # by the runner's one conditional read, or the worker's HEAD for a runner with its own client.
    request = StepRequest(request_id, pipeline.name, step_index, job.event, None, limits.timeout,
                          limits.memory_mb, str(scratch), check_source=event.is_creation)
    progress = _Progress(service, job_id, step_index, attempt_id, scratch)
    slot = ReservedSlot(service.db, spec, request_id, limits.timeout + lease)
    if not slot.take():
        return end.throttle(spec.concurrency or 0)
    with leases.held(progress.renew, job_id, attempt_id, lease, asked_at=asked_at) as held:
        try:
            result = execute(service, request, cancel=held.lost, spec=spec)
        finally:
            slot.give()
        if not held.lost.is_set():
            # The lease is kept until the end is recorded: a result that finds the database away
            # waits for it without its step being taken over meanwhile (the end lets go of it).
            end.lease = held
            skipped = (result.value or {}).get("skipped") if result.ok else None
            if isinstance(skipped, SourceSkip):
                return _skip_source(service, end, event, skipped)
            return end.from_result(result)
    return end.late(result)


def _skip_source(service: Service, end: _Ender, event: ObjectEvent, skip: SourceSkip) -> Outcome:
    """End a step whose object was gone, superseded or the pipeline's own output, as its check found.

    A conditional read that found another version does not say which: a HEAD
    does (rarely needed), judged as the check would have judged it.
    """
    current = skip.current
    if skip.changed and current is None:
        try:
            current = service.storage.head(event.bucket, event.key)
        except ObjectNotFound:
            return end.skip(GONE)
        except StorageError as exc:  # superseded still; the nudged listing finds the current version
            log.warning("job %s: cannot ask which version of %s/%s is current: %s", end.job.id, event.bucket,
                        event.key, exc)
        if current is not None:
            verdict = source_verdict(current, event, end.job.pipeline)
            if verdict is None:  # changed back to the notified bytes meanwhile: run it again
                return end.failure("transient", "the object changed while the step started", ChildResult(False))
            skip = SourceSkip(verdict, changed=verdict == SUPERSEDED, current=current)
    outcome = end.skip(skip.reason)
    if skip.changed:
        if current is not None:
            _submit_current(service, event, current)
        # The store may have named the wrong key (versitygw under load): another object's
        # notification is then lost too. Its bucket is listed soon rather than at the interval.
        nudge(service.db, event.bucket)
    return outcome


def _submit_current(service: Service, event: ObjectEvent, info: ObjectInfo) -> None:
    """The version that superseded a job's gets its own job now (once: dispatch deduplicates).

    Its own notification usually made it already; this covers one that was lost
    or garbled (stores do both under load) without waiting for the reconciler.
    """
    current = event_for(event.bucket, event.key, info, event_name=event.event_name, source="runtime")
    try:
        service.submit([current], completed=True)
    except FileprocError as exc:  # the reconciler will find it
        log.warning("cannot submit the current version of %s/%s: %s", event.bucket, event.key, exc)


def execute(service: Service, request: StepRequest, *, cancel: threading.Event,
            spec: FunctionSpec | None = None) -> ChildResult:
    """Run the step's handler in a warm runner of its function (a process of its own), under its limits.

    ``cold`` on the result says whether the runner was new; ``recycled`` why
    it was replaced after this step (None: it stays warm for the next one).
    ``spec`` is the function the worker resolved for this step (a deployed
    function's runners are per version); its kind says how a runner starts.
    """
    return Execution(service, request, cancel=cancel, spec=spec).start().result()


class Execution:
    """:func:`execute` in three parts, so a stream's lane can send its next batch behind the one running: made
    (what the runner will be sent), :meth:`start` (sent), :meth:`result` (ended)."""

    def __init__(self, service: Service, request: StepRequest, *, cancel: threading.Event,
                 spec: FunctionSpec | None = None) -> None:
        if spec is None:
            pipeline = service.pipeline(request.pipeline)
            if pipeline is None:
                raise FunctionNotFound(f"pipeline {request.pipeline!r} is no longer configured")
            spec = service.spec(pipeline.steps[request.step_index])
        self.service, self.request, self.cancel, self.spec = service, request, cancel, spec
        self.kind = service.functions.kind(spec)
        self._running: Running | None = None
        self._result: ChildResult | None = None
        try:
            self._start = self.kind.start(spec, request)
        except SourceSkipped as skipped:  # its HEAD says the step does not run (a kind whose runner has its own client)
            self._result = ChildResult(True, value={"skipped": skipped.skip, "error": None, "result": None,
                                                    "outputs": []})
        except FileprocError as exc:  # a deployed version whose package will not install, say
            self._result = failed_start(exc, kind_of(exc))

    def start(self, *, after: Execution | None = None, item_failures: bool = False) -> Execution:
        """Send it to a runner; ``after``: chained behind that one, on its runner, run only if it succeeded
        (:meth:`fileproc.runtime.pool.RunnerPool.start`; ``item_failures``: a batch item failure is a failure)."""
        if self._result is None and self._running is None:
            request, start = self.request, self._start
            behind = after._running if after is not None else None
            if after is not None and behind is None:  # (that one never started: nor does this one)
                self._result = not_run("the step before it did not start")
                return self
            try:
                self._running = pool().start(
                    (self.spec.name, self.spec.version, request.memory_mb), self.service, start.work, start.payload,
                    warm=start.warm, spawn=start.spawn, timeout=request.timeout, memory_mb=request.memory_mb,
                    cancel=self.cancel, idle_seconds=self.service.settings.runtime.idle_seconds, after=behind,
                    item_failures=item_failures)
            except BaseException:
                if self.kind.step_scratch:
                    shutil.rmtree(request.scratch_dir, ignore_errors=True)
                raise
        return self

    def result(self) -> ChildResult:
        """How it ended (waiting for it if it runs)."""
        if self._result is not None:
            return self._result
        assert self._running is not None, "an execution is started before its result is asked for"
        try:
            result = self._running.result()
        finally:
            if self.kind.step_scratch:  # a step killed from outside (timeout, lost lease) cannot clean up after itself
                shutil.rmtree(self.request.scratch_dir, ignore_errors=True)
        if result.recycled and result.runner_pid:  # the runner is gone: so is its private TMPDIR
            shutil.rmtree(self.service.settings.data_dir.resolve() / "scratch" / f"{result.runner_pid}.tmp",
                          ignore_errors=True)
        self._result = self.kind.unfinished(self.spec, result, self.request)
        return self._result


THROTTLED = "throttled"
"""An attempt that found its function's reserved concurrency all in use: queued again, not a failure."""


class _Ender:
    """Builds the step's second transaction from how it ended, and sends what comes next."""

    def __init__(self, service: Service, job: Job, step_index: int, attempt_id: int, function: str,
                 limits: Limits, failures: int, policy: StepPolicy, *, report_level: int = logging.DEBUG,
                 version: str | None = None) -> None:
        self.service, self.job, self.step_index, self.attempt_id = service, job, step_index, attempt_id
        self.function, self.limits, self.failures, self.version = function, limits, failures, version
        self.policy, self.report_level = policy, report_level  # what the function's kind does at the end
        self.lease: leases.Lease | None = None  # held until the end is recorded, then let go
        self.patient = True  # wait for a database that does not answer (else record the end in the background)

    def _finish(self, attempt_status: str, outcome: str, reason: str | None, result: ChildResult | None,
                **extra: Any) -> Outcome:
        value = (result.value if result else None) or {}
        request_id = f"{self.job.id}-{self.step_index}-{self.attempt_id}"
        metering = attempt_metering(request_id, result, self.limits.memory_mb, value.get("log"), self.function,
                                    level=self.report_level)
        condition = extra.pop("condition", None)
        extra.update(self.policy.ended(outcome, condition, value.get("result"), self.failures))
        end = StepEnd(
            job_id=self.job.id, step_index=self.step_index, attempt_id=self.attempt_id,
            attempt_status=attempt_status, outcome=outcome, reason=reason,
            duration_ms=result.duration_ms if result else None,
            peak_memory_kb=result.peak_memory_kb if result else None,
            bytes_read=value.get("bytes_read", 0), bytes_written=value.get("bytes_written", 0),
            cold_start=result.cold if result else None, recycled=result.recycled if result else None,
            result=value.get("result"), version=self.version, **metering, **extra)
        try:
            recorded = _record(self.service, end, FINISH_PATIENCE_SECONDS if self.patient else 0)
        except DatabaseUnavailable as exc:
            if self.patient:
                raise
            log.warning("job %s: cannot record the end of step %d now (%s); recorded in the background",
                        self.job.id, self.step_index, exc)
            _record_later(self.service, end)
            return Outcome("late", reason or "")
        finally:
            if self.lease is not None:
                leases.let_go(self.lease)
        if not recorded:
            log.warning("job %s: step %d finished after losing its lease; result refused", self.job.id,
                        self.step_index)
            return Outcome("late", "this attempt lost its lease; another took the step over")
        self._log(outcome, reason)
        self.policy.committed()
        if outcome == "next":
            outbox.send(self.service, [Send(self.job.id, self.step_index + 1, self.job.pipeline)])
        return Outcome(outcome, reason or "", retry_in=end.retry_in if outcome == "retry" else None)

    def _log(self, outcome: str, reason: str | None) -> None:
        where = f"job {self.job.id} ({self.job.pipeline}) {self.job.bucket}/{self.job.key}"
        if outcome == "failed":
            log.warning("%s failed: %s", where, reason)
        elif outcome in ("succeeded", "skipped"):
            log.info("%s %s%s", where, outcome, f": {reason}" if reason else "")

    def succeed(self, result: ChildResult) -> Outcome:
        value = result.value or {}
        outputs = [Output(**o, step_index=self.step_index) for o in value.get("outputs", [])]
        pipeline = self.service.pipeline(self.job.pipeline)
        last = pipeline is None or self.step_index + 1 >= len(pipeline.steps)
        outcome = self._finish(AttemptStatus.SUCCEEDED, "succeeded" if last else "next", None, result,
                               outputs=outputs)
        if outcome.status == "succeeded" and pipeline is not None and pipeline.removes_outputs:
            self._remove_what_this_version_no_longer_makes()
        return outcome

    def _remove_what_this_version_no_longer_makes(self) -> None:
        job = self.service.db.get_job(self.job.id)
        if job is None:
            return
        try:
            remove_earlier_outputs(self.service, job, keep={(o.bucket, o.key) for o in job.outputs})
        except (StorageError, DatabaseUnavailable) as exc:  # the job is done; the next version tries again
            log.warning("job %s: could not remove earlier versions' outputs: %s", job.id, exc)

    def cleaned(self, cleanup: Cleanup) -> Outcome:
        """A removal job's end: what it removed is its result (and marked on the outputs)."""
        return self._finish(AttemptStatus.SUCCEEDED, "succeeded", None,
                            ChildResult(True, value={"result": cleanup.to_dict()}))

    def skip(self, reason: str) -> Outcome:
        return self._finish(AttemptStatus.SKIPPED, "skipped", reason, None, error=reason)

    def throttle(self, concurrency: int) -> Outcome:
        """Every slot of the function's reserved concurrency is in use: queue the step again soon."""
        why = f"throttled: all {concurrency} of {self.function!r}'s reserved concurrency in use"
        return self._finish(THROTTLED, "retry", why, None, retry_in=random.uniform(0.5, 1.5), error=why)

    def fail(self, attempt_status: str, reason: str, result: ChildResult | None = None,
             **extra: Any) -> Outcome:
        return self._finish(attempt_status, "failed", reason, result, **extra)

    def failure(self, kind: str, message: str, result: ChildResult, *, error: str | None = None,
                traceback: str | None = None) -> Outcome:
        """Retry a failure that may pass; fail the job on one that cannot, or when out of retries."""
        where = f"step {self.function!r}: "
        detail = {"error": error or message, "traceback": traceback}
        if kind == "memory":
            message = f"needed more than its memory limit of {self.limits.memory_mb} MB"
        if kind in ("permanent", "memory"):
            return self.fail(AttemptStatus.FAILED, where + message, result, **detail)
        failures = self.failures + 1
        if failures > self.limits.retries:
            return self.fail(AttemptStatus.FAILED, f"{where}failed {failures} times; last error: {message}",
                             result, **detail)
        delay = self.policy.retry_delay(failures)
        log.warning("job %s: %s failure, retry %d/%d in %.1f s: %s", self.job.id, kind, failures,
                    self.limits.retries, delay, message)
        return self._finish(AttemptStatus.FAILED, "retry", f"retrying in {delay:.0f} s after: {message}",
                            result, retry_in=delay, **detail)

    def late(self, result: ChildResult) -> Outcome:
        """The step was stopped because its lease was (about to be) lost.

        If another attempt took the step over, the fence refuses this and the
        attempt is recorded ``late``; if nobody has yet, the step is queued
        to run again at once (the lost attempt counts against its retries).
        """
        why = "stopped: this worker could not keep the step's lease (cut off from the database?)"
        self.patient = False  # the worker takes its next message at once rather than wait for the database
        return self._finish(AttemptStatus.LOST, "retry", why, result, error=why)

    def from_result(self, result: ChildResult) -> Outcome:
        if result.timed_out:  # not retried: the same input would time out again
            return self.fail(AttemptStatus.TIMED_OUT, f"step {self.function!r} {result.error}", result,
                             error=result.error)
        if not result.ok:  # it failed outside the handler, or died (a signal, the OOM killer) without reporting
            kind = "memory" if result.error_type == "MemoryError" else "error"
            return self.failure(kind, result.error or "the step's process died", result)
        error = (result.value or {}).get("error")
        if error is not None:
            return self.failure(error["kind"], error["message"], result,
                                error=f"{error['type']}: {error['message']}", traceback=error.get("traceback"))
        return self.succeed(result)


FINISH_PATIENCE_SECONDS = 120.0
"""How long a worker keeps trying to record a step's end while the database is unreachable."""


def _record(service: Service, end: StepEnd, patience: float = FINISH_PATIENCE_SECONDS) -> bool:
    """The step's second transaction, tried again while the database is unreachable.

    Safe to repeat: it is fenced to the attempt, so a try that did commit
    before its answer was lost makes the next one a refused no-op. Past
    ``patience`` seconds the worker gives up; the lease runs out and the
    step runs again elsewhere.
    """
    deadline = time.monotonic() + patience
    pause = 0.5
    while True:
        try:
            return service.db.finish_step(end)
        except DatabaseUnavailable as exc:
            if time.monotonic() + pause > deadline:
                raise
            log.warning("job %s: cannot record the end of step %d yet (%s); trying again in %.0f s",
                        end.job_id, end.step_index, exc, pause)
            time.sleep(pause)
            pause = min(pause * 2, 8.0)


def _record_later(service: Service, end: StepEnd) -> None:
    """Record a stopped attempt's end from a thread, while the worker goes on with its next message.

    Nothing waits for it: if it never gets through, the attempt is marked
    ``lost`` when another takes the step over.
    """
    def record() -> None:
        try:
            _record(service, end)
        except DatabaseUnavailable as exc:
            log.warning("job %s: gave up recording the end of step %d: %s", end.job_id, end.step_index, exc)

    threading.Thread(target=record, name=f"fileproc-end-{end.job_id}", daemon=True).start()


class _Progress:
    """Renews the step's lease and, with each renewal, copies its latest progress report to the attempt.

    The handler runs in another process and has no database connection: it
    leaves its report in the scratch folder (``Context.report_progress``).
    Riding on the renewals (every fifth of a lease, from the process's one
    lease keeper) costs a step no thread of its own. Progress is a courtesy:
    a report that cannot be read or written is skipped, never fails the step.
    """

    def __init__(self, service: Service, job_id: int, step_index: int, attempt_id: int, scratch: Path) -> None:
        self.service, self.job_id, self.step_index, self.attempt_id = service, job_id, step_index, attempt_id
        self.report = scratch / PROGRESS_FILE
        self._seen = 0

    def renew(self, job_id: int, attempt_id: int, lease_seconds: float) -> bool:
        """:data:`fileproc.runtime.leases.Renew`: the renewal, then the progress."""
        if not self.service.db.renew_lease(job_id, attempt_id, lease_seconds):
            return False
        try:
            changed = self.report.stat().st_mtime_ns
            if changed != self._seen:
                self._seen = changed
                progress = json.loads(self.report.read_text())
                if isinstance(progress, dict):
                    self.service.db.record_progress(self.job_id, self.step_index, self.attempt_id, progress)
        except FileNotFoundError:
            pass
        except (OSError, ValueError, DatabaseUnavailable) as exc:
            log.debug("job %s: progress not recorded: %s", self.job_id, exc)
        return True


def clean_scratch(service: Service) -> int:
    """Remove scratch folders left by steps killed before this worker started; how many."""
    root = service.settings.data_dir / "scratch"
    removed = 0
    if not root.is_dir():
        return 0
    for folder in root.iterdir():
        pid = folder.name.partition(".")[0]
        if pid.isdigit() and _alive(int(pid)):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


__all__ = ["Limits", "Outcome", "clean_scratch", "execute", "limits_for", "run_step"]
