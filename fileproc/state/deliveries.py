"""Destination records owed to webhooks: the deliveries outbox (see :class:`~fileproc.state.models.DeliveryRow`).

A delivery is written with the step's end (:func:`fileproc.state.steps.finish_step`).
Whoever posts it first *claims* it: ``next_at`` moves ``hold`` seconds ahead
in a transaction that only succeeds while it is due, so two processes never
post the same record at once; a claimer that dies leaves it due again after
``hold``. The claimer then records what came of its try.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update

from fileproc.state.models import DeliveryRow, utcnow
from fileproc.state.records import aware

if TYPE_CHECKING:
    from fileproc.state import Database


@dataclass(frozen=True)
class Claimed:
    """A delivery this process holds for one try."""

    id: int
    url: str
    record: dict[str, Any]
    attempts: int  # tries before this one
    created_at: datetime


def claim(db: Database, hold: float, *, request_id: str | None = None, limit: int = 10) -> list[Claimed]:
    """Take deliveries that are due (of ``request_id`` only, if given) for ``hold`` seconds."""
    # Found in a read (most rounds find nothing: no write lock taken), then claimed in a short write.
    with db.reading() as r:
        due = select(DeliveryRow.id).where(DeliveryRow.next_at <= db.now(r))
        if request_id is not None:
            due = due.where(DeliveryRow.request_id == request_id)
        ids = list(r.scalars(due.order_by(DeliveryRow.next_at).limit(limit)))
    if not ids:
        return []
    with db.session() as s:
        now = db.now(s)
        rows = s.execute(  # due still: another process may have claimed one meanwhile
            update(DeliveryRow).where(DeliveryRow.id.in_(ids), DeliveryRow.next_at <= now)
            .values(next_at=now + timedelta(seconds=hold))
            .returning(DeliveryRow.id, DeliveryRow.url, DeliveryRow.record, DeliveryRow.attempts,
                       DeliveryRow.created_at)
            .execution_options(synchronize_session=False))
        return sorted((Claimed(r.id, r.url, r.record, r.attempts, aware(r.created_at) or now) for r in rows),
                      key=lambda c: c.id)


def record_try(db: Database, delivery: Claimed, error: str | None, retry_in: float, retry_for: float) -> str:
    """What came of one try: ``delivered``, ``pending`` (due again in ``retry_in`` s) or ``given up``.

    A delivery is given up once ``retry_for`` seconds have passed since its step ended.
    """
    with db.session() as s:
        now = db.now(s)
        values: dict[str, Any] = {"attempts": DeliveryRow.attempts + 1, "last_error": error}
        if error is None:
            outcome, values = "delivered", {**values, "delivered_at": now, "next_at": None}
        elif (now - delivery.created_at).total_seconds() + retry_in > retry_for:
            outcome, values = "given up", {**values, "given_up_at": now, "next_at": None}
        else:
            outcome, values = "pending", {**values, "next_at": now + timedelta(seconds=retry_in)}
        s.execute(update(DeliveryRow).where(DeliveryRow.id == delivery.id, DeliveryRow.delivered_at.is_(None))
                  .values(**values).execution_options(synchronize_session=False))
        return outcome


def list_deliveries(db: Database, function: str | None = None, *, delivered: bool = False) -> list[dict[str, Any]]:
    """Deliveries (of ``function``), oldest first: pending and given up ones, and delivered ones if ``delivered``."""
    with db.reading() as s:
        query = select(DeliveryRow)
        if function:
            query = query.where(DeliveryRow.function == function)
        if not delivered:
            query = query.where(DeliveryRow.delivered_at.is_(None))
        return [{"id": r.id, "job": r.job_id, "function": r.function, "version": r.version,
                 "request_id": r.request_id, "condition": r.condition, "url": r.url, "attempts": r.attempts,
                 "state": "delivered" if r.delivered_at else "given up" if r.given_up_at else "pending",
                 "next_at": _iso(r.next_at), "delivered_at": _iso(r.delivered_at),
                 "given_up_at": _iso(r.given_up_at), "last_error": r.last_error,
                 "created_at": (aware(r.created_at) or utcnow()).isoformat(), "record": r.record}
                for r in s.scalars(query.order_by(DeliveryRow.id))]


def _iso(value: datetime | None) -> str | None:
    found = aware(value)
    return found.isoformat() if found else None


__all__ = ["Claimed", "claim", "list_deliveries", "record_try"]
