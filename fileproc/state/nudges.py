"""Nudges: a worker asks the reconciler to list a bucket soon, instead of at its interval.

A job skipped as superseded usually means its object was simply written
again; but under load versitygw sometimes names the wrong key in a
notification, and then the object it should have named has no notification
at all and waits for the reconciler's next pass (up to ``reconcile.interval``).
So the worker that skips a job as superseded leaves one row for its bucket
here (:func:`nudge`), and the reconciler, which looks every second
(:func:`take_nudges`), lists that bucket as soon as ``reconcile.min_interval``
allows (:class:`fileproc.intake.reconcile.Reconciler`).

A nudge is a courtesy: one that cannot be written is logged and dropped (the
interval's listing still comes), and each process writes at most one per
bucket per ``every`` seconds, so a burst of superseded jobs costs one row.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import String, and_, delete, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, mapped_column

from fileproc.errors import FileprocError
from fileproc.state.models import Base, utcnow
from fileproc.state.records import aware

if TYPE_CHECKING:
    from fileproc.state import Database

log = logging.getLogger(__name__)


class ListingNudgeRow(Base):
    __tablename__ = "listing_nudges"

    bucket: Mapped[str] = mapped_column(String(255), primary_key=True)
    asked_at: Mapped[datetime] = mapped_column(default=utcnow)


_sent: dict[tuple[str, str], float] = {}  # (database, bucket) -> when this process last nudged it (monotonic)
_lock = threading.Lock()


def nudge(db: Database, bucket: str, *, every: float = 1.0) -> bool:
    """Ask for a listing of ``bucket`` soon; whether a row was written (False: nudged lately, or no database)."""
    now, which = time.monotonic(), (str(db.engine.url), bucket)
    with _lock:
        if now - _sent.get(which, -math.inf) < every:
            return False
        _sent[which] = now
    insert = sqlite.insert if db.is_sqlite else postgresql.insert
    try:
        with db.session() as s:
            asked = db.now(s)
            statement = insert(ListingNudgeRow).values(bucket=bucket, asked_at=asked)
            s.execute(statement.on_conflict_do_update(index_elements=["bucket"], set_={"asked_at": asked}))
    except FileprocError as exc:
        log.warning("cannot ask for a listing of bucket %r soon (the reconciler lists it at its interval): %s",
                    bucket, exc)
        return False
    return True


def take_nudges(db: Database) -> dict[str, datetime]:
    """The buckets a listing was asked for, with when; each is removed as it is taken."""
    with db.reading() as s:
        found = {row.bucket: row.asked_at for row in s.scalars(select(ListingNudgeRow))}
    if found:
        # Only the rows as read: a nudge written meanwhile (a newer asked_at) stays for the next look.
        with db.session() as s:
            s.execute(delete(ListingNudgeRow).where(or_(*(
                and_(ListingNudgeRow.bucket == bucket, ListingNudgeRow.asked_at == asked)
                for bucket, asked in found.items()))))
    return {bucket: aware(asked) or utcnow() for bucket, asked in found.items()}


__all__ = ["ListingNudgeRow", "nudge", "take_nudges"]
