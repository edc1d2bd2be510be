"""Running totals behind ``GET /metrics``, so a scrape never reads the whole history.

:mod:`fileproc.metrics` rolls the attempts and jobs that settled since the
last scrape (of any API process) into these rows, and moves a mark past them:

- ``metric_totals``: one row per series value (``kind``, its label values
  joined by ``SEP``): attempts per function and status, cold and warm starts,
  histogram buckets and sums, jobs created per pipeline;
- ``metric_marks``: per source table (``attempts``, ``jobs``), the id up to
  which every row is in the totals, and (attempts) the ids at or below it that
  were still running then, counted when they end.

Both are small (a few hundred rows), and only the scrape writes them, under a
lock on the mark rows (SQLite: its write lock), so processes scraping at once
never count a row twice.

A roll-up is two transactions: :func:`settled` reads what settled past the
marks (a batch), the caller tallies it into series values, and
:func:`add_settled` adds those to the totals and moves the marks, unless
another process moved them meanwhile. :func:`snapshot` reads the totals and
what is above the marks, for a scrape. What a series value means is the
caller's: here it is a kind, its labels and a number.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple

from sqlalchemy import JSON, BigInteger, Float, Select, String, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from fileproc.state.models import AttemptRow, AttemptStatus, Base, JobRow, JobStatus, utcnow
from fileproc.state.records import aware

if TYPE_CHECKING:
    from fileproc.state import Database

SEP = "\x1f"
"""Between label values in ``MetricTotalRow.labels`` (never in a function, pipeline or status name)."""

UNFINISHED = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.FAILED, JobStatus.SKIPPED)
"""Job statuses counted over the status index (succeeded: jobs created minus these)."""


class MetricTotalRow(Base):
    __tablename__ = "metric_totals"

    kind: Mapped[str] = mapped_column(String(64), primary_key=True)
    labels: Mapped[str] = mapped_column(String(512), primary_key=True)
    value: Mapped[float] = mapped_column(Float, default=0.0)


class MetricMarkRow(Base):
    __tablename__ = "metric_marks"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    after: Mapped[int] = mapped_column(BigInteger, default=0)
    pending: Mapped[list[Any]] = mapped_column(JSON, default=list)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


Key = tuple[str, tuple[str, ...]]
"""A series value: its kind and label values (a row of ``metric_totals``)."""


class AttemptSample(NamedTuple):
    """One attempt as the metrics count it."""

    id: int
    function: str
    status: str
    duration_ms: int | None
    peak_memory_kb: int | None
    cold_start: bool | None
    started_at: datetime | None
    event_time: datetime | None
    """When the object was uploaded (its job's event time), if the event says."""


@dataclass(frozen=True)
class Marks:
    """How far the totals go: every attempt up to ``attempts`` but ``pending`` (still running then), every job
    up to ``jobs``. A database without totals yet has ``Marks()``."""

    attempts: int = 0
    pending: tuple[int, ...] = ()
    jobs: int = 0


@dataclass
class Settled:
    """What settled past the marks (one batch at most), for :func:`add_settled` once tallied.

    ``ended``: the attempts to count now (pending ones that ended, and those
    past the mark); ``running``: the attempts at or below the new mark still
    running; ``jobs_created``: jobs per pipeline with ids up to ``jobs``;
    ``more``: the batch was full (call again).
    """

    marks: Marks
    ended: list[AttemptSample] = field(default_factory=list)
    attempts: int = 0
    running: list[int] = field(default_factory=list)
    jobs_created: dict[str, int] = field(default_factory=dict)
    jobs: int | None = None
    more: bool = False

    @property
    def nothing(self) -> bool:
        """Nothing moves: no attempt or job settled since the marks, no pending attempt ended."""
        return (self.attempts == self.marks.attempts and tuple(self.running) == self.marks.pending
                and self.jobs is None)


@dataclass
class Snapshot:
    """What a scrape reads, in one read transaction.

    ``totals``: every series value rolled up; ``fresh``: the ended attempts
    above the marks (not in the totals yet); ``fresh_jobs``: jobs per pipeline
    above the jobs' mark; ``unfinished``: jobs per (pipeline, status) of
    :data:`UNFINISHED`.
    """

    totals: dict[Key, float] = field(default_factory=dict)
    fresh: list[AttemptSample] = field(default_factory=list)
    fresh_jobs: dict[str, int] = field(default_factory=dict)
    unfinished: dict[tuple[str, str], int] = field(default_factory=dict)


def settled(db: Database, *, settle: timedelta, batch: int, job_batch: int) -> Settled:
    """What settled past the marks: attempts and jobs that started (were created) ``settle`` ago or more.

    At most ``batch`` attempts and ``job_batch`` job ids. On PostgreSQL a
    smaller id may commit after a larger one, never ``settle`` later: so
    everything up to the new marks is final.
    """
    with db.reading() as s:
        marks = _marks(s)
        found = Settled(marks, attempts=marks.attempts)
        before = db.now(s) - settle
        if marks.pending:  # a few: the attempts that were running when the mark passed them
            ended = {row.id: row for row in map(_sample, s.execute(_attempts().where(
                AttemptRow.id.in_(marks.pending))))}
            for attempt_id in marks.pending:
                sample = ended.get(attempt_id)
                if sample is not None and sample.status == AttemptStatus.RUNNING:
                    found.running.append(attempt_id)
                elif sample is not None:
                    found.ended.append(sample)
        rows = s.execute(_attempts().where(AttemptRow.id > marks.attempts).order_by(AttemptRow.id)
                         .limit(batch)).all()
        for row in rows:
            sample = _sample(row)
            if sample.started_at is None or sample.started_at >= before:
                break
            if sample.status == AttemptStatus.RUNNING:
                found.running.append(sample.id)
            else:
                found.ended.append(sample)
            found.attempts = sample.id
        found.more = len(rows) == batch and found.attempts == rows[-1].id
        upto = s.scalar(select(func.max(JobRow.id)).where(JobRow.id > marks.jobs,
                                                          JobRow.id <= marks.jobs + job_batch,
                                                          JobRow.created_at < before))
        if upto is not None:
            found.jobs, found.jobs_created = upto, _jobs_created(s, marks.jobs, upto)
            found.more = found.more or upto == marks.jobs + job_batch
        else:  # none in the range: past a gap of unused ids (PostgreSQL's ON CONFLICT takes one per duplicate)?
            following = s.execute(select(JobRow.id, JobRow.created_at).where(JobRow.id > marks.jobs)
                                  .order_by(JobRow.id).limit(1)).first()
            if (following is not None and following.id > marks.jobs + job_batch
                    and (aware(following.created_at) or before) < before):
                found.jobs, found.more = following.id - 1, True  # nothing to count up to it
    return found


def add_settled(db: Database, found: Settled, values: Mapping[Key, float]) -> bool:
    """Add ``values`` (what ``found`` tallies to) to the totals and move the marks past ``found``.

    False, with nothing written, when another process moved the marks since
    ``found`` was read (read again).
    """
    try:
        with db.session() as s:
            rows = {m.name: m for m in s.scalars(select(MetricMarkRow).with_for_update())}
            if _marks_of(rows) != found.marks:
                return False
            for name in ("attempts", "jobs"):
                if name not in rows:
                    rows[name] = MetricMarkRow(name=name, after=0, pending=[])
                    s.add(rows[name])
            kinds = {kind for kind, _ in values}
            totals = {(r.kind, r.labels): r for r in s.scalars(select(MetricTotalRow)
                                                               .where(MetricTotalRow.kind.in_(kinds)))}
            for (kind, labels), value in values.items():
                joined = SEP.join(labels)
                total = totals.get((kind, joined))
                if total is None:
                    s.add(MetricTotalRow(kind=kind, labels=joined, value=value))
                else:
                    total.value += value
            now = utcnow()
            rows["attempts"].after, rows["attempts"].pending = found.attempts, sorted(found.running)
            rows["attempts"].updated_at = now
            if found.jobs is not None:
                rows["jobs"].after, rows["jobs"].updated_at = found.jobs, now
    except IntegrityError:  # two processes made the first marks at once: one did
        return False
    return True


def snapshot(db: Database, *, fresh: bool = True) -> Snapshot:
    """The totals, and (``fresh``) what is above the marks; the unfinished jobs' counts.

    Without ``fresh`` (while a long history is still being rolled up, when
    what is above the marks is most of it) only the totals.
    """
    found = Snapshot()
    totals: dict[Key, float] = collections.defaultdict(float)
    with db.reading() as s:
        marks = _marks(s)
        for total in s.scalars(select(MetricTotalRow)):
            totals[(total.kind, tuple(total.labels.split(SEP)))] += total.value
        if fresh:
            found.fresh = [_sample(row) for row in s.execute(_attempts().where(
                or_(AttemptRow.id > marks.attempts, AttemptRow.id.in_(marks.pending)),
                AttemptRow.status != AttemptStatus.RUNNING))]
            found.fresh_jobs = _jobs_created(s, marks.jobs, None)
        found.unfinished = {(pipeline, status): count for pipeline, status, count in s.execute(
            select(JobRow.pipeline, JobRow.status, func.count())
            .where(JobRow.status.in_(UNFINISHED)).group_by(JobRow.pipeline, JobRow.status))}
    found.totals = dict(totals)
    return found


def _attempts() -> Select[Any]:
    # Only the event's time, extracted by the database: decoding whole events was most of the cost.
    return (select(AttemptRow.id, AttemptRow.function, AttemptRow.status, AttemptRow.duration_ms,
                   AttemptRow.peak_memory_kb, AttemptRow.cold_start, AttemptRow.started_at,
                   JobRow.event["time"].as_string().label("event_time"))
            .join(JobRow, JobRow.id == AttemptRow.job_id))


def _sample(row: Any) -> AttemptSample:
    return AttemptSample(row.id, row.function, row.status, row.duration_ms, row.peak_memory_kb, row.cold_start,
                         aware(row.started_at), _event_time(row.event_time))


def _event_time(value: str | None) -> datetime | None:
    try:
        return aware(datetime.fromisoformat(value)) if value else None
    except ValueError:
        return None


def _marks(s: Session) -> Marks:
    return _marks_of({m.name: m for m in s.scalars(select(MetricMarkRow))})


def _marks_of(rows: dict[str, MetricMarkRow]) -> Marks:
    attempts, jobs = rows.get("attempts"), rows.get("jobs")
    return Marks(attempts=(attempts.after or 0) if attempts else 0,
                 pending=tuple(sorted(attempts.pending or [])) if attempts else (),
                 jobs=(jobs.after or 0) if jobs else 0)


def _jobs_created(s: Session, after: int, upto: int | None) -> dict[str, int]:
    """Jobs per pipeline with ids in (after, upto]; counted here: grouped in SQL, SQLite scans the unique
    index (which starts with the pipeline) instead of taking the range of the primary key."""
    query = select(JobRow.pipeline).where(JobRow.id > after)
    return dict(collections.Counter(s.scalars(query if upto is None else query.where(JobRow.id <= upto))))


__all__ = ["SEP", "UNFINISHED", "AttemptSample", "Key", "Marks", "MetricMarkRow", "MetricTotalRow", "Settled",
           "Snapshot", "add_settled", "settled", "snapshot"]
