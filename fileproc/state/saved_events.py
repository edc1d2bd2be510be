"""Saved test events of functions: the dashboard's test-invoke form keeps sample events by name.

As the Lambda console's "saved test events": an S3 event (``{"Records":
[...]}``) stored under a name, per function, and offered again in the form.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import JSON, String, delete, select
from sqlalchemy.orm import Mapped, mapped_column

from fileproc.state.models import Base, utcnow
from fileproc.state.records import aware

if TYPE_CHECKING:
    from fileproc.state import Database


class SavedEventRow(Base):
    __tablename__ = "function_test_events"

    function: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    event: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)




@dataclass(frozen=True)
class SavedEvent:
    function: str
    name: str
    event: dict[str, Any]
    updated_at: datetime


def save_event(db: Database, function: str, name: str, event: dict[str, Any]) -> SavedEvent:
    """Keep ``event`` as ``function``'s test event ``name`` (replacing one of that name)."""
    with db.session() as s:
        now = db.now(s)
        row = s.get(SavedEventRow, (function, name))
        if row is None:
            s.add(SavedEventRow(function=function, name=name, event=event, updated_at=now))
        else:
            row.event, row.updated_at = event, now
    return SavedEvent(function, name, event, now)


def saved_events(db: Database, function: str) -> list[SavedEvent]:
    """``function``'s saved test events, by name."""
    with db.reading() as s:
        return [SavedEvent(r.function, r.name, dict(r.event or {}), aware(r.updated_at) or utcnow())
                for r in s.scalars(select(SavedEventRow).where(SavedEventRow.function == function)
                                   .order_by(SavedEventRow.name))]


def delete_event(db: Database, function: str, name: str) -> bool:
    """Forget one saved test event; whether there was one."""
    with db.session() as s:
        gone = s.execute(delete(SavedEventRow).where(SavedEventRow.function == function, SavedEventRow.name == name))
        return bool(getattr(gone, "rowcount", 0))


__all__ = ["SavedEvent", "SavedEventRow", "delete_event", "save_event", "saved_events"]
