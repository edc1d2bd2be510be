"""Schedules' ticks, claimed here so that each runs once across every host (see :mod:`fileproc.schedules`).

- ``schedule_ticks``: one row per (schedule, tick), under a unique
  constraint. A scheduler *claims* a tick by inserting its row: of two hosts
  racing, the database lets exactly one insert win. The row holds a lease
  (``lease_until``, on the database's clock) until the run is recorded as
  finished; a claim whose host died before it finished may be taken over
  once the lease ran out (``runs`` counts the claims), so a tick is not lost
  with its host.
- ``schedules``: per schedule, the expression it has and since when
  (``since``): no tick before it is owed, so a new schedule, or one whose
  expression changed, does not run a tick from before it existed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import Integer, String, UniqueConstraint, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from fileproc.state.models import Base
from fileproc.state.records import aware

if TYPE_CHECKING:
    from fileproc.state import Database


class ScheduleRow(Base):
    __tablename__ = "schedules"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    expression: Mapped[str] = mapped_column(String(255))
    since: Mapped[datetime]


class ScheduleTickRow(Base):
    __tablename__ = "schedule_ticks"
    __table_args__ = (UniqueConstraint("schedule", "tick", name="uq_schedule_tick"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    schedule: Mapped[str] = mapped_column(String(255))
    tick: Mapped[datetime]
    worker: Mapped[str] = mapped_column(String(255))
    claimed_at: Mapped[datetime]
    lease_until: Mapped[datetime | None]
    runs: Mapped[int] = mapped_column(Integer, default=1)
    finished_at: Mapped[datetime | None]
    ok: Mapped[bool | None]
    job_id: Mapped[int | None]


@dataclass(frozen=True)
class Tick:
    """A claimed tick: who holds (or held) it, and how its run ended (``finished_at`` None: not yet)."""

    id: int
    schedule: str
    tick: datetime
    worker: str
    claimed_at: datetime
    lease_until: datetime | None
    runs: int
    finished_at: datetime | None
    ok: bool | None
    job_id: int | None


def _tick(row: ScheduleTickRow) -> Tick:
    return Tick(row.id, row.schedule, aware(row.tick) or row.tick, row.worker, aware(row.claimed_at) or row.claimed_at,
                aware(row.lease_until), row.runs, aware(row.finished_at), row.ok, row.job_id)


def since(db: Database, name: str, expression: str, now: datetime) -> datetime:
    """Since when ``name`` has had ``expression``: ``now`` (the scheduler's clock, the one its ticks are
    computed on), the first time it is asked or when its expression changed."""
    for _ in range(2):  # a host starting at the same time may insert it first
        try:
            with db.session() as s:
                row = s.get(ScheduleRow, name)
                if row is None:
                    s.add(ScheduleRow(name=name, expression=expression, since=now))
                    return now
                if row.expression != expression:
                    row.expression, row.since = expression, now
                return aware(row.since) or now
        except IntegrityError:
            continue
    raise AssertionError("unreachable: the row exists after a lost insert")


def last_claimed(db: Database, name: str) -> Tick | None:
    """``name``'s latest claimed tick."""
    with db.reading() as s:
        row = s.scalars(select(ScheduleTickRow).where(ScheduleTickRow.schedule == name)
                        .order_by(ScheduleTickRow.tick.desc()).limit(1)).one_or_none()
        return _tick(row) if row else None


def find(db: Database, name: str, tick: datetime) -> Tick | None:
    with db.reading() as s:
        row = s.scalars(select(ScheduleTickRow).where(ScheduleTickRow.schedule == name,
                                                      ScheduleTickRow.tick == tick)).one_or_none()
        return _tick(row) if row else None


def claim(db: Database, name: str, tick: datetime, worker: str, lease: float) -> Tick | None:
    """Take ``name``'s ``tick`` for ``worker`` for ``lease`` seconds: the claim, or None if another holds it.

    Another holds it while its claim is live (or it finished); a claim whose
    lease ran out before it finished is taken over (``runs`` > 1 on the answer).
    """
    try:
        with db.session() as s:
            now = db.now(s)
            until = now + timedelta(seconds=lease)
            s.execute(insert(ScheduleTickRow).values(schedule=name, tick=tick, worker=worker, claimed_at=now,
                                                     lease_until=until, runs=1))
            row = _held(s, name, tick)
            return _tick(row) if row else None
    except IntegrityError:
        pass  # claimed before: take it over if its claimer died mid-run
    with db.session() as s:
        now = db.now(s)
        taken = s.execute(
            update(ScheduleTickRow)
            .where(ScheduleTickRow.schedule == name, ScheduleTickRow.tick == tick,
                   ScheduleTickRow.finished_at.is_(None), ScheduleTickRow.lease_until < now)
            .values(worker=worker, claimed_at=now, lease_until=now + timedelta(seconds=lease),
                    runs=ScheduleTickRow.runs + 1)
            .execution_options(synchronize_session=False))
        if not taken.rowcount:  # type: ignore[attr-defined]
            return None
        row = _held(s, name, tick)
        return _tick(row) if row else None


def _held(s: Session, name: str, tick: datetime) -> ScheduleTickRow | None:
    return s.scalars(select(ScheduleTickRow).where(ScheduleTickRow.schedule == name,
                                                   ScheduleTickRow.tick == tick)).one_or_none()


def finish(db: Database, claimed: Tick, *, ok: bool, job_id: int | None) -> None:
    """Record how the run of a claimed tick ended (only while this claim holds it)."""
    with db.session() as s:
        s.execute(update(ScheduleTickRow)
                  .where(ScheduleTickRow.id == claimed.id, ScheduleTickRow.worker == claimed.worker,
                         ScheduleTickRow.runs == claimed.runs)
                  .values(finished_at=db.now(s), lease_until=None, ok=ok, job_id=job_id)
                  .execution_options(synchronize_session=False))


__all__ = ["ScheduleRow", "ScheduleTickRow", "Tick", "claim", "find", "finish", "last_claimed", "since"]
