"""A step's two transactions and its lease renewals, as statements built once.

They run for every step of every job, so they skip the ORM and SQLAlchemy's
execution machinery: each is a Core statement made at import time with bound
parameters (one definition for every dialect), compiled once per dialect and
run on the driver's own cursor inside the transaction of a plain connection
(:class:`Prepared`). :class:`~fileproc.state.Database` exposes them as
``start_step``, ``renew_lease`` and ``finish_step``.
"""

from __future__ import annotations

import enum
from collections import namedtuple
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Dialect, Table, and_, bindparam, delete, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement

from fileproc.state import logtotals
from fileproc.state.models import (
    AttemptRow,
    AttemptStatus,
    DeadLetterRow,
    DeliveryRow,
    JobRow,
    JobStatus,
    OutputRow,
    utcnow,
)
from fileproc.state.records import Job, StepEnd, StepStart, aware, job_of

BAD_ATTEMPTS = (AttemptStatus.FAILED, AttemptStatus.TIMED_OUT, AttemptStatus.LOST)
LOST_REASON = "the worker running this step was lost (killed, crashed, out of memory or cut off)"

jobs = cast(Table, JobRow.__table__)
attempts = cast(Table, AttemptRow.__table__)
outputs = cast(Table, OutputRow.__table__)
dead_letters = cast(Table, DeadLetterRow.__table__)
deliveries = cast(Table, DeliveryRow.__table__)

@dataclass(frozen=True)
class Tx:
    """A transaction on the driver's own connection (see :meth:`fileproc.state.Database.transaction`)."""

    dialect: Dialect
    connection: Any  # the pool's proxy of a DBAPI connection


@dataclass(frozen=True)
class _Compiled:
    sql: str
    names: tuple[str, ...] | None  # the parameters' order for a positional driver; None: by name
    defaults: dict[str, Any]  # values written into the statement itself
    binders: dict[str, Callable[[Any], Any]]  # the column types' conversions to the driver's values
    row: Any  # a namedtuple class for the rows a SELECT or RETURNING gives (None: no rows)
    readers: tuple[Callable[[Any], Any] | None, ...]  # the conversions back, column by column


class Prepared:
    """A Core statement run on the driver's cursor: what SQLAlchemy would send, without its per-call cost.

    SQLAlchemy spends about 30 µs around each statement where SQLite takes 3,
    and a step runs eight: most of what fileproc adds to a short step. The
    statement is compiled once per dialect; parameters go through the column
    types' bind processors and rows through their result processors, as
    SQLAlchemy does, so what is stored and read is the same either way.
    """

    def __init__(self, statement: ClauseElement) -> None:
        self.statement = statement
        self._by_dialect: dict[str, _Compiled] = {}

    def _compiled(self, dialect: Dialect) -> _Compiled:
        found = self._by_dialect.get(dialect.name)
        if found is None:
            found = self._by_dialect[dialect.name] = self._compile(dialect)
        return found

    def _compile(self, dialect: Dialect) -> _Compiled:
        compiled = cast(SQLCompiler, self.statement.compile(dialect=dialect))
        if "POSTCOMPILE" in compiled.string:
            raise ValueError("a Prepared statement cannot hold IN lists (they expand at each run)")
        binders: dict[str, Callable[[Any], Any]] = {}
        defaults: dict[str, Any] = {}
        for name, bind in compiled.binds.items():
            convert = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if convert is not None:
                binders[name] = convert
            if not bind.required:
                defaults[name] = bind.effective_value
        columns = list(cast(Any, self.statement).exported_columns)  # what a SELECT or RETURNING gives
        row = namedtuple("Row", [c.key for c in columns], rename=True) if columns else None  # type: ignore[misc]
        readers = tuple(c.type.dialect_impl(dialect).result_processor(dialect, None) for c in columns)
        names = tuple(compiled.positiontup or ()) if dialect.positional else None
        return _Compiled(compiled.string, names, defaults, binders, row, readers)

    def _parameters(self, compiled: _Compiled, params: Mapping[str, Any]) -> Any:
        values = {**compiled.defaults, **params}
        for name, value in values.items():
            if isinstance(value, enum.Enum):
                values[name] = value = value.value
            convert = compiled.binders.get(name)
            if convert is not None and value is not None:
                values[name] = convert(value)
        return values if compiled.names is None else tuple(values[name] for name in compiled.names)

    def _cursor(self, tx: Tx) -> Any:
        return tx.connection.cursor()

    def rowcount(self, tx: Tx, params: Mapping[str, Any]) -> int:
        """Run a write; how many rows it changed."""
        compiled = self._compiled(tx.dialect)
        cursor = self._cursor(tx)
        try:
            cursor.execute(compiled.sql, self._parameters(compiled, params))
            return int(cursor.rowcount)
        finally:
            cursor.close()

    def rows(self, tx: Tx, params: Mapping[str, Any]) -> list[Any]:
        """Run a SELECT (or a write with RETURNING); its rows, with attributes named after the columns."""
        compiled = self._compiled(tx.dialect)
        cursor = self._cursor(tx)
        try:
            cursor.execute(compiled.sql, self._parameters(compiled, params))
            found = cursor.fetchall()
        finally:
            cursor.close()
        readers = compiled.readers
        return [compiled.row(*(value if read is None or value is None else read(value)
                               for read, value in zip(readers, raw, strict=True))) for raw in found]

    def first(self, tx: Tx, params: Mapping[str, Any]) -> Any | None:
        found = self.rows(tx, params)
        return found[0] if found else None

    def many(self, tx: Tx, params: Iterable[Mapping[str, Any]]) -> None:
        """Run a write once per set of parameters."""
        compiled = self._compiled(tx.dialect)
        cursor = self._cursor(tx)
        try:
            cursor.executemany(compiled.sql, [self._parameters(compiled, p) for p in params])
        finally:
            cursor.close()


_JOB = Prepared(select(jobs).where(jobs.c.id == bindparam("p_job")))

_NEW_ATTEMPT = Prepared(insert(attempts).values(
    job_id=bindparam("p_job"), step_index=bindparam("p_step"), function=bindparam("p_function"),
    worker=bindparam("p_worker"), started_at=bindparam("p_now"), status=AttemptStatus.RUNNING,
    bytes_read=0, bytes_written=0,
).returning(attempts.c.id))

# The conditions are checked again here: on PostgreSQL another worker may have taken the step since the read.
_TAKE = Prepared(update(jobs).where(
    jobs.c.id == bindparam("p_job"), jobs.c.step_index == bindparam("p_step"),
    # A queued retry waits out its backoff even if an old message turns up early.
    or_(and_(jobs.c.status == JobStatus.QUEUED,
             or_(jobs.c.send_after.is_(None), jobs.c.send_after <= bindparam("p_now"))),
        and_(jobs.c.status == JobStatus.RUNNING,
             or_(jobs.c.lease_until.is_(None), jobs.c.lease_until < bindparam("p_now")))),
).values(
    # The step's message is consumed: from now on sent_at marks a re-send in flight.
    status=JobStatus.RUNNING, lease_until=bindparam("p_lease_until"), attempt_id=bindparam("p_attempt"),
    updated_at=bindparam("p_now"), send_after=None, sent_at=None,
))

_LOSE_OTHERS = Prepared(update(attempts).where(
    attempts.c.job_id == bindparam("p_job"), attempts.c.status == AttemptStatus.RUNNING,
    attempts.c.id != bindparam("p_attempt"),
).values(status=AttemptStatus.LOST, finished_at=bindparam("p_now"), error=LOST_REASON))

_BAD_COUNTS = Prepared(select(attempts.c.status, func.count()).where(
    attempts.c.job_id == bindparam("p_job"), attempts.c.step_index == bindparam("p_step"),
    or_(*(attempts.c.status == status for status in BAD_ATTEMPTS)),  # (Prepared takes no IN lists)
).group_by(attempts.c.status))

# A lease that ran out is still renewed while nobody took the step over: after an outage of the
# database (nobody could take anything over then) the step goes on where it was.
_RENEW = Prepared(update(jobs).where(
    jobs.c.id == bindparam("p_job"), jobs.c.attempt_id == bindparam("p_attempt"),
    jobs.c.status == JobStatus.RUNNING,
).values(lease_until=bindparam("p_lease_until")))

# Every write of a step's end is fenced to the attempt that owns the step.
_FENCE = (jobs.c.id == bindparam("p_job"), jobs.c.attempt_id == bindparam("p_attempt"),
          jobs.c.step_index == bindparam("p_step"), jobs.c.status == JobStatus.RUNNING)
_RELEASE: dict[str, Any] = {"updated_at": bindparam("p_now"), "lease_until": None, "attempt_id": None}

_MOVE_NEXT = Prepared(update(jobs).where(*_FENCE).values(
    status=JobStatus.QUEUED, step_index=jobs.c.step_index + 1, error=None, sent_at=bindparam("p_sent_at"),
    send_after=None, sends=jobs.c.sends + bindparam("p_sends"), **_RELEASE))
_MOVE_RETRY = Prepared(update(jobs).where(*_FENCE).values(
    status=JobStatus.QUEUED, error=bindparam("p_reason"), sent_at=None, send_after=bindparam("p_send_after"),
    **_RELEASE))
_MOVE_END = Prepared(update(jobs).where(*_FENCE).values(
    status=bindparam("p_status"), error=bindparam("p_reason"), finished_at=bindparam("p_now"), **_RELEASE))

_END_ATTEMPT = Prepared(update(attempts).where(attempts.c.id == bindparam("p_attempt")).values(
    status=bindparam("p_status"), finished_at=bindparam("p_now"), duration_ms=bindparam("p_duration"),
    peak_memory_kb=bindparam("p_peak"), bytes_read=bindparam("p_read"), bytes_written=bindparam("p_written"),
    cold_start=bindparam("p_cold"), recycled=bindparam("p_recycled"), error=bindparam("p_error"),
    traceback=bindparam("p_traceback"), result=bindparam("p_result"), version=bindparam("p_version"),
    memory_mb=bindparam("p_memory"), billed_ms=bindparam("p_billed"), log=bindparam("p_log"),
))

_OUTPUTS = {name: Prepared(dialect.insert(outputs).values(
    job_id=bindparam("p_job"), step_index=bindparam("p_step"), bucket=bindparam("p_bucket"), key=bindparam("p_key"),
    size=bindparam("p_size"), etag=bindparam("p_etag"), content_type=bindparam("p_type"),
).on_conflict_do_nothing()) for name, dialect in (("sqlite", sqlite), ("postgresql", postgresql))}
_NOW = Prepared(select(func.now()))
_DEAD_LETTER = Prepared(insert(dead_letters).values(
    job_id=bindparam("p_job"), function=bindparam("p_function"), version=bindparam("p_version"),
    request_id=bindparam("p_request"), condition=bindparam("p_condition"), error=bindparam("p_error"),
    record=bindparam("p_record"), created_at=bindparam("p_now")))
_DELIVERY = Prepared(insert(deliveries).values(  # due at once: the worker posts it right after the commit
    job_id=bindparam("p_job"), function=bindparam("p_function"), version=bindparam("p_version"),
    request_id=bindparam("p_request"), condition=bindparam("p_condition"), url=bindparam("p_url"),
    record=bindparam("p_record"), attempts=0, next_at=bindparam("p_now"), created_at=bindparam("p_now")))

# A `logs` step's file totals replace those of an earlier version of the same file (see state/logtotals.py).
_LOG_FILE_FORGET = Prepared(delete(logtotals.log_files).where(
    logtotals.log_files.c.bucket == bindparam("p_bucket"), logtotals.log_files.c.key == bindparam("p_key")))
_LOG_FILE_ADD = Prepared(insert(logtotals.log_files).values(
    updated_at=bindparam("p_now"), **{name: bindparam(f"p_{name}") for name in logtotals.COLUMNS}))


def now(tx: Tx) -> datetime:
    """The database's clock (workers' clocks differ; SQLite lives on this host)."""
    if tx.dialect.name == "sqlite":
        return utcnow()
    return aware(_NOW.rows(tx, {})[0][0]) or utcnow()


class _Raced(Exception):
    """Another worker took the step between our read and our write (PostgreSQL): roll back."""


def start_step(connect: Callable[[], Any], job_id: int, step_index: int, worker: str, lease_seconds: float,
               function_of: Callable[[str, int], str]) -> StepStart | Job | None:
    """See :meth:`fileproc.state.Database.start_step`."""
    try:
        with connect() as tx:
            at = now(tx)
            row = _JOB.first(tx, {"p_job": job_id})
            if row is None:
                return None
            send_after, lease_until = aware(row.send_after), aware(row.lease_until)
            due = row.step_index == step_index and (
                (row.status == JobStatus.QUEUED and (send_after is None or send_after <= at))
                or (row.status == JobStatus.RUNNING and (lease_until is None or lease_until < at)))
            if not due:
                return job_of(row, details=False)
            attempt_id = _NEW_ATTEMPT.rows(tx, {
                "p_job": job_id, "p_step": step_index, "p_function": function_of(row.pipeline, step_index),
                "p_worker": worker, "p_now": at})[0].id
            params = {"p_job": job_id, "p_step": step_index, "p_now": at, "p_attempt": attempt_id,
                      "p_lease_until": at + timedelta(seconds=lease_seconds)}
            if not _TAKE.rowcount(tx, params):
                raise _Raced
            failures = lost = 0
            if row.status == JobStatus.RUNNING:  # taken over from a worker whose lease ran out
                _LOSE_OTHERS.rowcount(tx, params)
            if row.status == JobStatus.RUNNING or row.error is not None:  # earlier attempts at this step
                counts = {status: count for status, count in _BAD_COUNTS.rows(tx, params)}
                failures, lost = sum(counts.values()), counts.get(AttemptStatus.LOST, 0)
            taken = job_of(row, details=False)
            return StepStart(taken, attempt_id, failures=failures, lost=lost)
    except _Raced:
        with connect() as tx:
            again = _JOB.first(tx, {"p_job": job_id})
            return job_of(again, details=False) if again else None


def renew_lease(connect: Callable[[], Any], job_id: int, attempt_id: int, lease_seconds: float) -> bool:
    """See :meth:`fileproc.state.Database.renew_lease`."""
    with connect() as tx:
        at = now(tx)
        return bool(_RENEW.rowcount(tx, {"p_job": job_id, "p_attempt": attempt_id, "p_now": at,
                                        "p_lease_until": at + timedelta(seconds=lease_seconds)}))


def finish_step(connect: Callable[[], Any], end: StepEnd) -> bool:
    """See :meth:`fileproc.state.Database.finish_step`."""
    with connect() as tx:
        at = now(tx)
        fence = {"p_job": end.job_id, "p_attempt": end.attempt_id, "p_step": end.step_index, "p_now": at}
        if end.outcome == "next":
            moved = _MOVE_NEXT.rowcount(tx, {**fence, "p_sent_at": at if end.send_now else None,
                                            "p_sends": 1 if end.send_now else 0})
        elif end.outcome == "retry":
            moved = _MOVE_RETRY.rowcount(tx, {**fence, "p_reason": end.reason,
                                             "p_send_after": at + timedelta(seconds=end.retry_in)})
        else:
            moved = _MOVE_END.rowcount(tx, {**fence, "p_status": JobStatus(end.outcome), "p_reason": end.reason})
        _END_ATTEMPT.rowcount(tx, {
            "p_attempt": end.attempt_id, "p_now": at, "p_status": end.attempt_status if moved else AttemptStatus.LATE,
            "p_duration": end.duration_ms, "p_peak": end.peak_memory_kb, "p_read": end.bytes_read,
            "p_written": end.bytes_written, "p_cold": end.cold_start, "p_recycled": end.recycled,
            "p_error": end.error if moved else _late_reason(end), "p_traceback": end.traceback,
            "p_result": end.result, "p_version": end.version, "p_memory": end.memory_mb, "p_billed": end.billed_ms,
            "p_log": end.log,
        })
        if moved and end.dead_letter:
            letter = end.dead_letter
            _DEAD_LETTER.rowcount(tx, {"p_job": end.job_id, "p_function": letter["function"],
                                       "p_version": letter.get("version"), "p_request": letter["request_id"],
                                       "p_condition": letter["condition"], "p_error": end.error,
                                       "p_record": letter["record"], "p_now": at})
        if moved and end.delivery:  # a destination record owed: delivered from this outbox
            owed = end.delivery
            _DELIVERY.rowcount(tx, {"p_job": end.job_id, "p_function": owed["function"],
                                    "p_version": owed.get("version"), "p_request": owed["request_id"],
                                    "p_condition": owed["condition"], "p_url": owed["url"], "p_record": owed["record"],
                                    "p_now": at})
        if moved and end.outputs:
            _OUTPUTS[tx.dialect.name].many(tx, [
                {"p_job": end.job_id, "p_step": end.step_index, "p_bucket": o.bucket, "p_key": o.key,
                 "p_size": o.size, "p_etag": o.etag, "p_type": o.content_type} for o in end.outputs])
        if moved and end.outcome in ("next", "succeeded") and isinstance(end.result, dict) \
                and "log_totals" in end.result:  # a `logs` step's file totals (see state/logtotals.py)
            _record_log_totals(tx, end.result["log_totals"])
        return bool(moved)


_PROGRESS = Prepared(update(attempts).where(
    attempts.c.id == bindparam("p_attempt"), attempts.c.status == AttemptStatus.RUNNING,
    select(jobs.c.id).where(*_FENCE).exists(),
).values(progress=bindparam("p_progress")))


def record_progress(connect: Callable[[], Any], job_id: int, step_index: int, attempt_id: int,
                    progress: dict[str, Any]) -> bool:
    """See :meth:`fileproc.state.Database.record_progress`."""
    with connect() as tx:
        at = now(tx)
        return bool(_PROGRESS.rowcount(tx, {"p_job": job_id, "p_attempt": attempt_id, "p_step": step_index,
                                            "p_progress": {**progress, "at": at.isoformat()}}))


def _record_log_totals(tx: Tx, totals: Any) -> None:
    row = logtotals.row_of(totals)
    if row is not None:
        _LOG_FILE_FORGET.rowcount(tx, {"p_bucket": row["bucket"], "p_key": row["key"]})
        _LOG_FILE_ADD.rowcount(tx, {"p_now": utcnow(), **{f"p_{name}": value for name, value in row.items()}})


def _late_reason(end: StepEnd) -> str:
    what = end.error or end.attempt_status
    return f"result refused: this attempt lost its lease and another attempt took the step over ({what})"


# --- the outbox's rarer questions (Session, not Prepared: they run every few seconds at most) ----------


def waiting(s: Any, at: datetime, wanted: Iterable[tuple[int, int]]) -> set[tuple[int, int]]:
    """Of ``wanted`` (job id, step index), those whose step is queued and due: not started by anyone."""
    pairs = set(wanted)
    if not pairs:
        return set()
    rows = s.execute(select(jobs.c.id, jobs.c.step_index).where(
        jobs.c.id.in_(sorted({job for job, _ in pairs})), jobs.c.status == JobStatus.QUEUED,
        or_(jobs.c.send_after.is_(None), jobs.c.send_after <= at)))
    return {(row.id, row.step_index) for row in rows} & pairs


def spare_leases(s: Any, at: datetime, lease_seconds: float, expired_after: datetime) -> int:
    """Renew, on their holders' behalf, the leases that ran out since ``expired_after`` and were not taken over.

    Called once the database answers again after an outage: while it was
    away no holder could renew, and nobody could take a step over either.
    """
    return int(s.execute(update(jobs).where(
        jobs.c.status == JobStatus.RUNNING, jobs.c.lease_until < at, jobs.c.lease_until >= expired_after,
    ).values(lease_until=at + timedelta(seconds=lease_seconds)).execution_options(
        synchronize_session=False)).rowcount or 0)


def unsend_sent_before(s: Any, before: datetime) -> int:
    """Steps queued, sent before ``before`` and never started: due again at once (the broker lost them)."""
    return int(s.execute(update(jobs).where(
        jobs.c.status == JobStatus.QUEUED, jobs.c.sent_at.is_not(None), jobs.c.sent_at < before,
    ).values(sent_at=None).execution_options(synchronize_session=False)).rowcount or 0)
