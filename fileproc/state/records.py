"""What the state database hands out: plain frozen dataclasses, never live ORM rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fileproc.events import ObjectEvent
from fileproc.state.models import AttemptRow, JobRow, JobStatus, utcnow


@dataclass(frozen=True)
class Attempt:
    id: int
    step_index: int
    function: str
    status: str
    worker: str
    started_at: datetime
    finished_at: datetime | None
    duration_ms: int | None
    peak_memory_kb: int | None
    bytes_read: int
    bytes_written: int
    error: str | None
    cold_start: bool | None = None
    traceback: str | None = None
    result: Any = None
    recycled: str | None = None
    progress: dict[str, Any] | None = None
    version: str | None = None
    memory_mb: int | None = None
    billed_ms: int | None = None
    log: str | None = None


@dataclass(frozen=True)
class Output:
    bucket: str
    key: str
    size: int
    etag: str
    content_type: str
    step_index: int = 0
    removed_at: datetime | None = None  # fileproc removed it (see Pipeline.on_delete) ...
    removed_by: int | None = None  # ... with this job


@dataclass(frozen=True)
class Job:
    id: int
    pipeline: str
    bucket: str
    key: str
    version: str
    status: str
    step_index: int
    error: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    event: dict[str, Any]
    attempts: list[Attempt] = field(default_factory=list)
    outputs: list[Output] = field(default_factory=list)
    removed: list[Output] = field(default_factory=list)  # earlier jobs' outputs this job removed

    @property
    def object_event(self) -> ObjectEvent:
        return ObjectEvent.from_dict(self.event)

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    def usage(self) -> dict[str, int]:
        """Duration, peak memory and bytes of all attempts, summed (peak: max)."""
        return {
            "duration_ms": sum(a.duration_ms or 0 for a in self.attempts),
            "peak_memory_kb": max((a.peak_memory_kb or 0 for a in self.attempts), default=0),
            "bytes_read": sum(a.bytes_read for a in self.attempts),
            "bytes_written": sum(a.bytes_written for a in self.attempts),
            "cold_starts": sum(1 for a in self.attempts if a.cold_start),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "pipeline": self.pipeline,
            "bucket": self.bucket,
            "key": self.key,
            "version": self.version,
            "status": self.status,
            "step": self.step_index,
            "error": self.error,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "outputs": [_output_dict(o) for o in self.outputs],
            "removed": [_output_dict(o) for o in self.removed],
            "attempts": [
                {
                    "id": a.id, "step": a.step_index, "function": a.function, "status": a.status,
                    "worker": a.worker, "started_at": a.started_at.isoformat(),
                    "finished_at": a.finished_at.isoformat() if a.finished_at else None,
                    "duration_ms": a.duration_ms, "peak_memory_kb": a.peak_memory_kb,
                    "bytes_read": a.bytes_read, "bytes_written": a.bytes_written, "cold_start": a.cold_start,
                    "recycled": a.recycled, "error": a.error, "traceback": a.traceback, "result": a.result,
                    "progress": a.progress, "version": a.version, "memory_mb": a.memory_mb,
                    "billed_ms": a.billed_ms, "log": a.log,
                }
                for a in self.attempts
            ],
            "usage": self.usage(),
        }


def _output_dict(o: Output) -> dict[str, Any]:
    found: dict[str, Any] = {"bucket": o.bucket, "key": o.key, "size": o.size, "etag": o.etag}
    if o.removed_at is not None:
        found.update(removed_at=o.removed_at.isoformat(), removed_by=o.removed_by)
    return found


TERMINAL = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.SKIPPED)
STATUSES = tuple(JobStatus)


@dataclass(frozen=True)
class StepStart:
    """A step this worker now owns (the first of a step's two transactions).

    ``attempt_id`` is the fence: every later write for the step names it, and
    is refused once another attempt has taken the step over.
    """

    job: Job
    attempt_id: int
    failures: int  # earlier attempts at this step that failed, timed out or were lost
    lost: int  # of those, how many were lost (worker killed or cut off)


@dataclass(frozen=True)
class StepEnd:
    """Everything the second transaction records, atomically.

    ``outcome`` is what becomes of the job: ``next`` (queue step + 1),
    ``succeeded``, ``failed``, ``skipped`` or ``retry`` (queued again after
    ``retry_in`` seconds).
    """

    job_id: int
    step_index: int
    attempt_id: int
    attempt_status: str
    outcome: str
    reason: str | None = None
    retry_in: float = 0.0
    outputs: list[Output] = field(default_factory=list)
    duration_ms: int | None = None
    peak_memory_kb: int | None = None
    bytes_read: int = 0
    bytes_written: int = 0
    cold_start: bool | None = None
    recycled: str | None = None
    error: str | None = None
    traceback: str | None = None
    result: Any = None
    version: str | None = None
    memory_mb: int | None = None
    billed_ms: int | None = None
    log: str | None = None
    dead_letter: dict[str, Any] | None = None  # a deployed function's final failure, recorded with the end
    delivery: dict[str, Any] | None = None  # a destination record owed to a URL, recorded with the end
    send_now: bool = True  # the caller sends the next step itself right after the commit


@dataclass(frozen=True)
class Send:
    """A step message the outbox must hand to the broker."""

    job_id: int
    step_index: int
    pipeline: str


def aware(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; everything here is UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def output_of(row: Any) -> Output:
    return Output(row.bucket, row.key, row.size, row.etag, row.content_type, row.step_index, aware(row.removed_at),
                  row.removed_by)


def attempt_of(row: AttemptRow) -> Attempt:
    return Attempt(
        row.id, row.step_index, row.function, row.status, row.worker, aware(row.started_at) or utcnow(),
        aware(row.finished_at), row.duration_ms, row.peak_memory_kb, row.bytes_read, row.bytes_written, row.error,
        row.cold_start, row.traceback, row.result, row.recycled, row.progress, row.version, row.memory_mb,
        row.billed_ms, row.log,
    )


def job_of(row: JobRow, *, details: bool = True) -> Job:
    return Job(
        row.id, row.pipeline, row.bucket, row.key, row.version, row.status, row.step_index, row.error,
        aware(row.created_at) or utcnow(), aware(row.updated_at) or utcnow(), aware(row.finished_at),
        dict(row.event),
        [attempt_of(a) for a in row.attempts] if details else [],
        [output_of(o) for o in row.outputs]
        if details else [],
    )
