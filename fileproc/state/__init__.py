"""The state database: events, jobs, attempts, outputs and usage.

SQLite by default (WAL, so the API, the watcher and workers share it), any
SQLAlchemy URL otherwise (PostgreSQL in production). Callers get plain
dataclasses (:class:`Job`), never live ORM rows.

Job status: ``queued`` -> ``running`` -> ``succeeded`` | ``failed`` |
``skipped`` (superseded by a newer version, deleted, or written by its own
pipeline). A job that is retried goes back to ``queued``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, and_, create_engine, event, func, or_, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, selectinload, sessionmaker

from fileproc.errors import FileprocError
from fileproc.events import ObjectEvent
from fileproc.state.models import AttemptRow, Base, EventRow, JobRow, OutputRow, utcnow

TERMINAL = ("succeeded", "failed", "skipped")
STATUSES = ("queued", "running", *TERMINAL)


class DatabaseUnavailable(FileprocError):
    """The state database cannot be reached or written."""


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


@dataclass(frozen=True)
class Output:
    bucket: str
    key: str
    size: int
    etag: str
    content_type: str
    step_index: int = 0


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

    @property
    def object_event(self) -> ObjectEvent:
        return ObjectEvent.from_dict(self.event)

    def usage(self) -> dict[str, int]:
        """Duration, peak memory and bytes of all attempts, summed (peak: max)."""
        return {
            "duration_ms": sum(a.duration_ms or 0 for a in self.attempts),
            "peak_memory_kb": max((a.peak_memory_kb or 0 for a in self.attempts), default=0),
            "bytes_read": sum(a.bytes_read for a in self.attempts),
            "bytes_written": sum(a.bytes_written for a in self.attempts),
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
            "outputs": [{"bucket": o.bucket, "key": o.key, "size": o.size, "etag": o.etag} for o in self.outputs],
            "attempts": [
                {
                    "step": a.step_index, "function": a.function, "status": a.status, "worker": a.worker,
                    "started_at": a.started_at.isoformat(),
                    "finished_at": a.finished_at.isoformat() if a.finished_at else None,
                    "duration_ms": a.duration_ms, "peak_memory_kb": a.peak_memory_kb,
                    "bytes_read": a.bytes_read, "bytes_written": a.bytes_written, "error": a.error,
                }
                for a in self.attempts
            ],
            "usage": self.usage(),
        }


@dataclass(frozen=True)
class Claim:
    """The result of trying to start a step.

    ``attempt_id`` is set when this worker now owns the step. Otherwise
    ``retry_after`` (seconds) says another worker holds a live lease, or
    ``job`` is None / terminal and there is nothing to do.
    """

    job: Job | None
    attempt_id: int | None = None
    lost: int = 0
    retry_after: float | None = None


def _aware(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; everything here is UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _attempt(row: AttemptRow) -> Attempt:
    return Attempt(
        row.id, row.step_index, row.function, row.status, row.worker, _aware(row.started_at) or utcnow(),
        _aware(row.finished_at), row.duration_ms, row.peak_memory_kb, row.bytes_read, row.bytes_written, row.error,
    )


def _job(row: JobRow, *, details: bool = True) -> Job:
    return Job(
        row.id, row.pipeline, row.bucket, row.key, row.version, row.status, row.step_index, row.error,
        _aware(row.created_at) or utcnow(), _aware(row.updated_at) or utcnow(), _aware(row.finished_at),
        dict(row.event),
        [_attempt(a) for a in row.attempts] if details else [],
        [Output(o.bucket, o.key, o.size, o.etag, o.content_type, o.step_index) for o in row.outputs]
        if details else [],
    )


class Database:
    """fileproc's state, behind a handful of intention-named methods."""

    def __init__(self, url: str) -> None:
        self.url = url
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
        self.engine: Engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        try:
            Base.metadata.create_all(self.engine)
        except OperationalError as exc:
            raise DatabaseUnavailable(f"cannot open the state database: {_plain(exc)}") from exc

    def after_fork(self) -> None:
        """Drop pooled connections inherited from a parent process."""
        self.engine.dispose(close=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        try:
            with self._sessions.begin() as session:
                yield session
        except OperationalError as exc:
            raise DatabaseUnavailable(f"state database error: {_plain(exc)}") from exc

    # -- intake ---------------------------------------------------------

    def record_event(self, event: ObjectEvent) -> int:
        with self.session() as s:
            row = EventRow(source=event.source, event_name=event.event_name, bucket=event.bucket,
                           key=event.key, data=event.to_dict())
            s.add(row)
            s.flush()
            return row.id

    def create_job(self, pipeline: str, event: ObjectEvent) -> tuple[Job, bool]:
        """The job for (pipeline, bucket, key, version): new, or the one that exists."""
        try:
            with self.session() as s:
                row = JobRow(pipeline=pipeline, bucket=event.bucket, key=event.key,
                             version=event.version, event=event.to_dict())
                s.add(row)
                s.flush()
                return _job(row, details=False), True
        except IntegrityError:
            return self.find_job(pipeline, event.bucket, event.key, event.version), False

    def find_job(self, pipeline: str, bucket: str, key: str, version: str) -> Job:
        with self.session() as s:
            row = s.scalars(select(JobRow).where(
                JobRow.pipeline == pipeline, JobRow.bucket == bucket, JobRow.key == key, JobRow.version == version,
            )).one()
            return _job(row, details=False)

    def output_of(self, bucket: str, key: str, etag: str | None) -> set[str]:
        """Pipelines that wrote this exact object (loop prevention without a HEAD)."""
        if not etag:
            return set()
        with self.session() as s:
            rows = s.execute(
                select(JobRow.pipeline).join(OutputRow, OutputRow.job_id == JobRow.id)
                .where(OutputRow.bucket == bucket, OutputRow.key == key, OutputRow.etag == etag)
            )
            return {r[0] for r in rows}

    def mark_enqueued(self, job_id: int) -> None:
        with self.session() as s:
            s.execute(update(JobRow).where(JobRow.id == job_id).values(enqueued=True))

    def pending_enqueue(self, limit: int = 500) -> list[Job]:
        """Queued jobs whose message never reached the broker."""
        with self.session() as s:
            rows = s.scalars(select(JobRow).where(JobRow.status == "queued", JobRow.enqueued.is_(False))
                             .order_by(JobRow.id).limit(limit))
            return [_job(r, details=False) for r in rows]

    # -- runtime --------------------------------------------------------

    def claim(self, job_id: int, step_index: int, function: str, worker: str, lease_seconds: float) -> Claim:
        """Take the step for this worker, unless it is done or held by a live worker.

        A step whose holder's lease ran out (its worker was killed) is taken
        over; the dead holder's attempts are marked ``lost`` and counted.
        """
        now = utcnow()
        with self.session() as s:
            # One conditional UPDATE, so two workers racing for the step cannot both win.
            taken = s.execute(  # type: ignore[attr-defined]
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.step_index == step_index,
                       or_(JobRow.status == "queued",
                           and_(JobRow.status == "running",
                                or_(JobRow.lease_until.is_(None), JobRow.lease_until < now))))
                .values(status="running", lease_until=now + timedelta(seconds=lease_seconds), updated_at=now)
            ).rowcount
            row = s.get(JobRow, job_id)
            if row is None:
                return Claim(None)
            if not taken:
                lease = _aware(row.lease_until)
                live = row.status == "running" and row.step_index == step_index and lease is not None
                retry_after = (lease - now).total_seconds() + 0.5 if live and lease else None
                return Claim(_job(row, details=False), retry_after=retry_after)
            s.execute(
                update(AttemptRow)
                .where(AttemptRow.job_id == job_id, AttemptRow.status == "running")
                .values(status="lost", finished_at=now,
                        error="the worker running this step was lost (killed, crashed or out of memory)")
            )
            lost = s.scalar(select(func.count()).select_from(AttemptRow).where(
                AttemptRow.job_id == job_id, AttemptRow.step_index == step_index, AttemptRow.status == "lost"))
            attempt = AttemptRow(job_id=job_id, step_index=step_index, function=function, worker=worker)
            s.add(attempt)
            s.flush()
            return Claim(_job(row, details=False), attempt.id, lost=lost or 0)

    def failures(self, job_id: int, step_index: int) -> int:
        """How many attempts at this step ended badly (failed, timed out or lost)."""
        with self.session() as s:
            return s.scalar(select(func.count()).select_from(AttemptRow).where(
                AttemptRow.job_id == job_id, AttemptRow.step_index == step_index,
                AttemptRow.status.in_(("failed", "timed_out", "lost")))) or 0

    def finish_attempt(self, attempt_id: int, status: str, *, duration_ms: int | None = None,
                       peak_memory_kb: int | None = None, bytes_read: int = 0, bytes_written: int = 0,
                       error: str | None = None) -> None:
        with self.session() as s:
            s.execute(update(AttemptRow).where(AttemptRow.id == attempt_id).values(
                status=status, finished_at=utcnow(), duration_ms=duration_ms, peak_memory_kb=peak_memory_kb,
                bytes_read=bytes_read, bytes_written=bytes_written, error=error))

    def record_outputs(self, job_id: int, step_index: int, outputs: list[Output]) -> None:
        with self.session() as s:
            s.add_all(OutputRow(job_id=job_id, step_index=step_index, bucket=o.bucket, key=o.key, size=o.size,
                                etag=o.etag, content_type=o.content_type) for o in outputs)

    def advance(self, job_id: int, next_step: int) -> None:
        """The step finished; queue the next one."""
        self._set(job_id, status="queued", step_index=next_step, enqueued=False, lease_until=None, error=None)

    def requeue(self, job_id: int, reason: str) -> None:
        """The step will run again (a retry after a transient failure)."""
        self._set(job_id, status="queued", enqueued=True, lease_until=None, error=reason)

    def finish(self, job_id: int, status: str, error: str | None = None) -> None:
        assert status in TERMINAL
        self._set(job_id, status=status, error=error, lease_until=None, finished_at=utcnow())

    def _set(self, job_id: int, **values: Any) -> None:
        with self.session() as s:
            s.execute(update(JobRow).where(JobRow.id == job_id).values(updated_at=utcnow(), **values))

    # -- admin ----------------------------------------------------------

    def get_job(self, job_id: int) -> Job | None:
        with self.session() as s:
            row = s.get(JobRow, job_id, options=[selectinload(JobRow.attempts), selectinload(JobRow.outputs)])
            return _job(row) if row else None

    def list_jobs(self, status: str | None = None, limit: int = 100, *, bucket: str | None = None) -> list[Job]:
        with self.session() as s:
            query = select(JobRow).options(selectinload(JobRow.attempts), selectinload(JobRow.outputs))
            if status:
                query = query.where(JobRow.status == status)
            if bucket:
                query = query.where(JobRow.bucket == bucket)
            rows = s.scalars(query.order_by(JobRow.id.desc()).limit(limit))
            return [_job(r) for r in rows]

    def reset_for_retry(self, job_id: int) -> Job | None:
        """Put a failed (or skipped) job back in the queue, from the step that failed."""
        with self.session() as s:
            row = s.get(JobRow, job_id, with_for_update=True)
            if row is None or row.status not in ("failed", "skipped"):
                return _job(row, details=False) if row else None
            row.status, row.enqueued, row.error, row.finished_at, row.lease_until = "queued", False, None, None, None
            s.execute(update(AttemptRow).where(AttemptRow.job_id == job_id,
                                               AttemptRow.step_index == row.step_index,
                                               AttemptRow.status.in_(("failed", "timed_out", "lost")))
                      .values(status=AttemptRow.status + "-before-retry"))
            s.flush()
            return _job(row, details=False)

    def failed_job_ids(self) -> list[int]:
        with self.session() as s:
            return list(s.scalars(select(JobRow.id).where(JobRow.status == "failed").order_by(JobRow.id)))

    def check(self) -> None:
        """Raise DatabaseUnavailable if the database cannot be queried."""
        with self.session() as s:
            s.execute(select(1))


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _plain(exc: Exception) -> str:
    # SQLAlchemy messages carry the SQL and sometimes the URL; keep the first line only.
    return str(getattr(exc, "orig", exc)).splitlines()[0]


__all__ = ["STATUSES", "TERMINAL", "Attempt", "Claim", "Database", "DatabaseUnavailable", "Job", "Output"]
