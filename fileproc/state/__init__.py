"""The state database: jobs, attempts, outputs and usage.

SQLite by default (WAL, so the API, the watcher and workers share it), any
SQLAlchemy URL otherwise (PostgreSQL in production). Callers get plain
dataclasses (:mod:`.records`), never live ORM rows.

Job status: ``queued`` -> ``running`` -> ``succeeded`` | ``failed`` |
``skipped``. A step costs two transactions: :meth:`Database.start_step`
(claim, lease, attempt) and :meth:`Database.finish_step` (attempt, outputs,
usage and what becomes of the job, atomically, fenced to the attempt that owns
the step). Leases are measured on the database's clock, never a worker's.

All of fileproc's SQL is in this package. Beside :class:`Database`, each
feature's queries sit in a module of their own, as plain functions of the
database: :mod:`.usage` (``fileproc usage``), :mod:`.attempt_logs`
(``fileproc logs``), :mod:`.activity` (the overview's counts, queue depths),
:mod:`.drift` (reconciliation), :mod:`.metrictotals` (``/metrics``'s running
totals), :mod:`.logtotals`, :mod:`.deployments`, :mod:`.deliveries`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, and_, create_engine, event, func, make_url, or_, select, tuple_, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, configure_mappers, selectinload, sessionmaker
from sqlalchemy.pool import PoolProxiedConnection

from fileproc.errors import FileprocError
from fileproc.events import ObjectEvent
from fileproc.state import (  # noqa: F401 (their tables)
    creating,
    function_urls,
    heartbeats,
    invocations,
    logtotals,
    metrictotals,
    nudges,
    saved_events,
    schedules,
    steps,
    streams,
)
from fileproc.state.models import AttemptRow, AttemptStatus, Base, JobRow, JobStatus, OutputRow, utcnow
from fileproc.state.records import (
    STATUSES,
    TERMINAL,
    Attempt,
    Job,
    Output,
    Send,
    StepEnd,
    StepStart,
    aware,
    job_of,
    output_of,
)

BAD_ATTEMPTS = (AttemptStatus.FAILED, AttemptStatus.TIMED_OUT, AttemptStatus.LOST)
LOST_REASON = "the worker running this step was lost (killed, crashed, out of memory or cut off)"


class DatabaseUnavailable(FileprocError):
    """The state database cannot be reached or written."""


class Database:
    """fileproc's state, behind a handful of intention-named methods."""

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        kwargs: dict[str, Any] = {"pool_pre_ping": not self.is_sqlite}
        if self.is_sqlite:
            # The driver's own transaction handling is off: we BEGIN IMMEDIATE ourselves,
            # so a transaction that reads and then writes never fails on a lock upgrade.
            kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False, "isolation_level": None}
        else:
            # A host cut off from the database notices instead of hanging: connect and
            # statement timeouts, and TCP keepalives on an idle connection.
            kwargs["connect_args"] = {
                "connect_timeout": max(1, int(timeout)),
                "options": f"-c statement_timeout={int(timeout * 1000)}",
                "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3,
                "tcp_user_timeout": int(timeout * 1000),
            }
            kwargs["pool_timeout"] = timeout
        self.engine: Engine = create_engine(url, **kwargs)
        self._read_engine = self.engine
        if self.is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
            event.listen(self.engine, "begin", _sqlite_begin)
            # Reads get connections of their own that never take the write lock: in WAL mode
            # they see a snapshot and never hold up a writer (the receiver's commits).
            self._read_engine = create_engine(url, **kwargs)
            event.listen(self._read_engine, "connect", _sqlite_pragmas)
            event.listen(self._read_engine, "begin", _sqlite_begin_read)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._reads = sessionmaker(self._read_engine, expire_on_commit=False)
        try:
            Base.metadata.create_all(self.engine)
            _add_new_columns(self.engine)
        except OperationalError as exc:
            raise DatabaseUnavailable(f"cannot open the state database: {_plain(exc)}") from exc
        configure_mappers()  # now, not in the first query (0.1 s of CPU: in a worker, inside its first step)

    def after_fork(self) -> None:
        """Drop pooled connections inherited from a parent process."""
        self.engine.dispose(close=False)
        self._read_engine.dispose(close=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction, committed at the end (rolled back on an exception)."""
        with _translated(), self._sessions.begin() as session:
            yield session

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A read-only transaction: on SQLite it never takes (nor waits for) the write lock."""
        with _translated(), self._reads.begin() as session:
            yield session

    @contextmanager
    def transaction(self) -> Iterator[steps.Tx]:
        """One transaction on the driver's own connection, for the statements run on every step.

        Committed at the end, rolled back on an exception; a connection that
        failed is dropped from the pool rather than reused.
        """
        with self._driver_connection() as connection:
            if self.is_sqlite:
                connection.driver_connection.execute("BEGIN IMMEDIATE")  # type: ignore[union-attr]
            yield steps.Tx(self.engine.dialect, connection)
            connection.commit()

    @contextmanager
    def _driver_connection(self) -> Iterator[PoolProxiedConnection]:
        """A pooled connection of the driver's own, back to the pool at the end: rolled back on an
        exception, and dropped from the pool rather than reused if it failed."""
        failure = self.engine.dialect.loaded_dbapi.OperationalError
        with _translated(failure):
            connection = self.engine.raw_connection()
            try:
                yield connection
            except failure:
                connection.invalidate()
                raise
            except BaseException:
                connection.rollback()
                raise
            finally:
                connection.close()  # back to the pool

    def now(self, s: Session) -> datetime:
        """The database's clock (workers' clocks differ; SQLite lives on this host)."""
        if self.is_sqlite:
            return utcnow()
        return aware(s.scalar(select(func.now()))) or utcnow()

    # -- intake ---------------------------------------------------------

    def create_jobs(self, wanted: Iterable[tuple[str, ObjectEvent]], *, sending: bool) -> list[tuple[Job, bool]]:
        """The job for each (pipeline, event): new, or the one that exists; one transaction.

        ``sending``: the caller sends new jobs' messages itself right after the
        commit, so they are marked sent; if that fails the outbox sends them
        after ``runtime.resend_after`` (or at once after :meth:`unsend`).
        """
        with self.session() as s:
            return creating.create_jobs(s, wanted, sending=sending, sqlite_db=self.is_sqlite)

    def outputs_among(self, objects: Iterable[tuple[str, str, str]]) -> dict[tuple[str, str, str], set[str]]:
        """For each (bucket, key, etag) fileproc wrote: the pipelines that wrote it (loop prevention)."""
        wanted = [o for o in set(objects) if o[2]]
        if not wanted:
            return {}
        found: dict[tuple[str, str, str], set[str]] = {}
        with self.reading() as s:
            rows = s.execute(
                select(OutputRow.bucket, OutputRow.key, OutputRow.etag, JobRow.pipeline)
                .join(JobRow, OutputRow.job_id == JobRow.id)
                .where(tuple_(OutputRow.bucket, OutputRow.key, OutputRow.etag).in_(wanted)))
            for bucket, key, etag, pipeline in rows:
                found.setdefault((bucket, key, etag), set()).add(pipeline)
        return found

    def output_of(self, bucket: str, key: str, etag: str | None) -> set[str]:
        """Pipelines that wrote this exact object."""
        return self.outputs_among([(bucket, key, etag or "")]).get((bucket, key, etag or ""), set())

    def find_job(self, pipeline: str, bucket: str, key: str, version: str) -> Job | None:
        with self.reading() as s:
            row = s.scalars(select(JobRow).where(
                JobRow.pipeline == pipeline, JobRow.bucket == bucket, JobRow.key == key, JobRow.version == version,
            )).one_or_none()
            return job_of(row, details=False) if row else None

    def unsend(self, job_ids: list[int]) -> None:
        """The broker did not take these messages: let the outbox send them as soon as it can."""
        if job_ids:
            with self.session() as s:
                s.execute(update(JobRow).where(JobRow.id.in_(job_ids), JobRow.status.not_in(TERMINAL))
                          .values(sent_at=None).execution_options(synchronize_session=False))

    # -- outbox ---------------------------------------------------------

    def take_sends(self, resend_after: float, limit: int = 500) -> list[Send]:
        """Steps due to go to the broker, marked sent in the same statement.

        Due: a queued step never sent (and past its retry delay), a queued step
        sent ``resend_after`` seconds ago that never started (its message was
        lost), and a running step whose lease ran out (its worker died or was
        cut off) that was not sent again since.
        """
        # Found in a read (a scan of the waiting jobs must not hold up the receiver's
        # commits), then marked in a short write that checks each is still due.
        with self.reading() as r:
            ids = list(r.scalars(select(JobRow.id).where(_due(self.now(r), resend_after))
                                 .order_by(JobRow.id).limit(limit)))
        if not ids:
            return []
        with self.session() as s:
            now = self.now(s)
            rows = s.execute(
                update(JobRow).where(JobRow.id.in_(ids), _due(now, resend_after))
                .values(sent_at=now, sends=JobRow.sends + 1)
                .returning(JobRow.id, JobRow.step_index, JobRow.pipeline)
                .execution_options(synchronize_session=False))
            return sorted((Send(r.id, r.step_index, r.pipeline) for r in rows), key=lambda x: x.job_id)

    # -- runtime --------------------------------------------------------

    def start_step(self, job_id: int, step_index: int, worker: str, lease_seconds: float,
                   function_of: Callable[[str, int], str]) -> StepStart | Job | None:
        """Take the step for this worker: the first of the step's two transactions.

        Returns a :class:`StepStart` when this worker now owns the step; the job
        when it is not this step's turn (finished, moved on, a retry still in
        its backoff) or another worker holds a live lease; None when there is
        no such job. A step whose lease ran out is taken over: its holder's
        attempt is marked ``lost``. ``function_of(pipeline, step_index)`` names
        the function the attempt runs.
        """
        return steps.start_step(self.transaction, job_id, step_index, worker, lease_seconds, function_of)

    def renew_lease(self, job_id: int, attempt_id: int, lease_seconds: float) -> bool:
        """Extend the step's lease; False once another attempt owns the step (stop at once)."""
        return steps.renew_lease(self.transaction, job_id, attempt_id, lease_seconds)

    def finish_step(self, end: StepEnd) -> bool:
        """Record how the step ended and move the job on: the step's second transaction.

        Fenced: if the attempt no longer owns the step (its lease ran out and
        another attempt took over), nothing of the job changes and no output is
        recorded; the attempt is marked ``late`` with its usage. Returns
        whether the result was taken. Outputs are recorded once per (job,
        step, bucket, key).
        """
        return steps.finish_step(self.transaction, end)

    def record_progress(self, job_id: int, step_index: int, attempt_id: int, progress: dict[str, Any]) -> bool:
        """Note how far a running step has got, in one short write fenced to its attempt.

        False (nothing written) once the attempt no longer owns the step.
        """
        return steps.record_progress(self.transaction, job_id, step_index, attempt_id, progress)

    def end_job(self, job_id: int, status: JobStatus, reason: str) -> None:
        """End a job that cannot run at all (its pipeline is gone), whatever step it is at."""
        with self.session() as s:
            now = self.now(s)
            s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.status.not_in(TERMINAL))
                      .values(status=status, error=reason, finished_at=now, updated_at=now, lease_until=None,
                              attempt_id=None)
                      .execution_options(synchronize_session=False))

    # -- search ---------------------------------------------------------

    def outputs_after(self, after: int, content_type: str, *, limit: int = 500) -> list[tuple[int, str, str]]:
        """``(id, bucket, key)`` of outputs of ``content_type`` with an id above ``after``, by id.

        How the search indexer follows what steps wrote (see :mod:`fileproc.search.indexer`).
        """
        with self.reading() as s:
            rows = s.execute(select(OutputRow.id, OutputRow.bucket, OutputRow.key)
                             .where(OutputRow.id > after, OutputRow.content_type == content_type)
                             .order_by(OutputRow.id).limit(limit))
            return [(row.id, row.bucket, row.key) for row in rows]

    def last_output_id(self) -> int:
        """The highest output id, on the driver's own connection: cheap enough to ask four times a second."""
        with self._driver_connection() as connection:  # back to the pool at the end, which ends the read
            cursor = connection.cursor()
            cursor.execute(f"SELECT max(id) FROM {OutputRow.__tablename__}")
            row = cursor.fetchone()
            cursor.close()
        return int(row[0] or 0) if row else 0

    def output_buckets(self, content_type: str) -> list[str]:
        """Buckets outputs of ``content_type`` were ever written to."""
        with self.reading() as s:
            return sorted(s.scalars(select(OutputRow.bucket).where(OutputRow.content_type == content_type)
                                    .distinct()))

    def log_summary(self, prefix: str) -> dict[str, Any]:
        """Rolling totals of the log files whose ``bucket/key`` starts with ``prefix`` (or whose stream is it)."""
        row = logtotals.LogFileRow
        bucket, _, key_prefix = prefix.partition("/")
        with self.reading() as s:
            rows = list(s.scalars(select(row).where(or_(
                row.stream == prefix,
                and_(row.bucket == bucket, row.key.startswith(key_prefix, autoescape=True))))))
            return logtotals.summarise(rows)

    # -- admin ----------------------------------------------------------

    def record_invocation(self, done: invocations.Invoked) -> tuple[int, int]:
        """An invocation on a non-object event, recorded once it ran (see :mod:`.invocations`); (job, attempt)."""
        return invocations.record_invocation(self.transaction, done)

    def record_invocations(self, many: list[invocations.Invoked]) -> list[tuple[int, int]]:
        """Many invocations recorded in one transaction (a stream's, written behind it); their (job, attempt)."""
        return invocations.record_invocations(self.transaction, many)

    def get_job(self, job_id: int) -> Job | None:
        with self.reading() as s:
            row = s.get(JobRow, job_id, options=[selectinload(JobRow.attempts), selectinload(JobRow.outputs)])
            if row is None:
                return None
            removed = s.scalars(select(OutputRow).where(OutputRow.removed_by == job_id).order_by(OutputRow.id))
            return replace(job_of(row), removed=[output_of(o) for o in removed])

    # -- outputs that follow their source (Pipeline.on_delete) ------------

    def earlier_outputs(self, job: Job) -> list[tuple[int, Output]]:
        """What earlier jobs of ``job``'s pipeline made from the same object and is still in place, by id."""
        with self.reading() as s:
            rows = s.scalars(
                select(OutputRow).join(JobRow, OutputRow.job_id == JobRow.id)
                .where(JobRow.pipeline == job.pipeline, JobRow.bucket == job.bucket, JobRow.key == job.key,
                       JobRow.id < job.id, OutputRow.removed_at.is_(None))
                .order_by(OutputRow.id))
            return [(row.id, output_of(row)) for row in rows]

    def mark_removed(self, output_ids: list[int], by_job: int) -> None:
        """These outputs are gone from storage, removed by job ``by_job``."""
        if output_ids:
            with self.session() as s:
                s.execute(update(OutputRow).where(OutputRow.id.in_(output_ids), OutputRow.removed_at.is_(None))
                          .values(removed_at=self.now(s), removed_by=by_job)
                          .execution_options(synchronize_session=False))

    def list_jobs(self, status: str | None = None, limit: int = 100, *, bucket: str | None = None,
                  key: str | None = None, pipeline: str | None = None, prefix: str | None = None,
                  offset: int = 0) -> list[Job]:
        """Jobs, newest first; each filter given narrows them (``prefix``: of the key)."""
        with self.reading() as s:
            query = select(JobRow).options(selectinload(JobRow.attempts), selectinload(JobRow.outputs))
            if status:
                query = query.where(JobRow.status == status)
            if bucket:
                query = query.where(JobRow.bucket == bucket)
            if key is not None:
                query = query.where(JobRow.key == key)
            if pipeline:
                query = query.where(JobRow.pipeline == pipeline)
            if prefix:
                query = query.where(JobRow.key.startswith(prefix, autoescape=True))
            rows = s.scalars(query.order_by(JobRow.id.desc()).offset(offset).limit(limit))
            return [job_of(r) for r in rows]

    def count_jobs(self) -> dict[str, int]:
        """How many jobs are in each status."""
        with self.reading() as s:
            counts = dict(s.execute(select(JobRow.status, func.count()).group_by(JobRow.status)).all())
            return {status: counts.get(status, 0) for status in STATUSES}

    def reset_for_retry(self, job_id: int) -> Job | None:
        """Put a failed (or skipped) job back in the queue, from the step that failed."""
        with self.session() as s:
            now = self.now(s)
            row = s.get(JobRow, job_id)
            if row is None or row.status not in (JobStatus.FAILED, JobStatus.SKIPPED):
                return job_of(row, details=False) if row else None
            row.status, row.error, row.finished_at, row.lease_until = JobStatus.QUEUED, None, None, None
            row.sent_at, row.send_after, row.attempt_id, row.updated_at = None, None, None, now
            # The failures before an admin's retry no longer count against the step's retries.
            s.execute(update(AttemptRow).where(AttemptRow.job_id == job_id,
                                               AttemptRow.step_index == row.step_index,
                                               AttemptRow.status.in_(BAD_ATTEMPTS))
                      .values(status=AttemptStatus.RETRIED)
                      .execution_options(synchronize_session=False))
            s.flush()
            return job_of(row, details=False)

    def failed_job_ids(self) -> list[int]:
        with self.reading() as s:
            return list(s.scalars(select(JobRow.id).where(JobRow.status == JobStatus.FAILED).order_by(JobRow.id)))

    def checkpoint(self) -> None:
        """SQLite: copy the write-ahead log into the database, without blocking writers (else nothing)."""
        if not self.is_sqlite:
            return
        raw = self.engine.raw_connection()  # outside SQLAlchemy's transactions: a checkpoint needs none
        try:
            raw.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except Exception as exc:
            raise DatabaseUnavailable(f"state database error: {exc}") from exc
        finally:
            raw.close()

    def check(self) -> None:
        """Raise DatabaseUnavailable if the database cannot be queried."""
        with self.reading() as s:
            s.execute(select(1))


def sqlite_file(url: str) -> Path | None:
    """The file a SQLite database URL names; None for another database (or SQLite without a file name)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    return Path(parsed.database)


def _add_new_columns(engine: Engine) -> None:
    """Add the model's columns an older state database lacks (create_all makes new tables only).

    Only nullable columns are ever added to a table after its first release,
    so an old database takes them as they are: empty for the rows it holds.
    """
    from sqlalchemy import inspect, text
    from sqlalchemy.exc import ProgrammingError

    preparer = engine.dialect.identifier_preparer
    for table in Base.metadata.sorted_tables:
        present = {c["name"] for c in inspect(engine).get_columns(table.name)}
        for column in table.columns:
            if column.name in present:
                continue
            assert column.nullable, f"{table.name}.{column.name}: a column added later must be nullable"
            kind = column.type.compile(dialect=engine.dialect)
            try:
                with engine.begin() as c:
                    c.execute(text(f"ALTER TABLE {preparer.quote(table.name)} "
                                   f"ADD COLUMN {preparer.quote(column.name)} {kind}"))
            except (OperationalError, ProgrammingError):
                # Processes starting together (serve's api and worker) race to add it: one wins.
                if column.name not in {c["name"] for c in inspect(engine).get_columns(table.name)}:
                    raise
        for index in table.indexes:  # an added column's index
            with contextlib.suppress(OperationalError, ProgrammingError):  # (made meanwhile by another process)
                index.create(engine, checkfirst=True)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    # No checkpoint inside a commit (it would stall whoever commits, tens of ms): the
    # outbox relay of every process runs a passive one instead (Database.checkpoint).
    cursor.execute("PRAGMA wal_autocheckpoint=0")
    cursor.close()


def _sqlite_begin(connection: Any) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def _sqlite_begin_read(connection: Any) -> None:
    connection.exec_driver_sql("BEGIN")


def _due(now: datetime, resend_after: float) -> Any:
    """Steps due to go to the broker (see :meth:`Database.take_sends`)."""
    stale = now - timedelta(seconds=resend_after)
    return or_(
        and_(JobRow.status == JobStatus.QUEUED,
             or_(and_(JobRow.sent_at.is_(None), or_(JobRow.send_after.is_(None), JobRow.send_after <= now)),
                 JobRow.sent_at < stale)),
        and_(JobRow.status == JobStatus.RUNNING, JobRow.lease_until < now,
             or_(JobRow.sent_at.is_(None), JobRow.sent_at < stale)),
    )


@contextmanager
def _translated(*driver_errors: type[Exception]) -> Iterator[None]:
    """The driver's errors (a lock timeout, a lost connection) as ours, in one plain line.

    SQLAlchemy wraps them in its OperationalError; ``driver_errors`` are the
    driver's own, raised where fileproc talks to the driver directly.
    """
    caught: tuple[type[Exception], ...] = (OperationalError, *driver_errors)
    try:
        yield
    except caught as exc:
        raise DatabaseUnavailable(f"state database error: {_plain(exc)}") from exc


def _plain(exc: Exception) -> str:
    # SQLAlchemy messages carry the SQL and sometimes the URL; keep the first line only.
    return str(getattr(exc, "orig", exc)).splitlines()[0]


__all__ = [
    "STATUSES", "TERMINAL", "Attempt", "AttemptStatus", "Database", "DatabaseUnavailable", "Job", "JobStatus",
    "Output", "Send", "StepEnd", "StepStart", "sqlite_file",
]
