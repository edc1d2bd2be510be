"""Function URLs in the state database: which deployed functions answer HTTP at ``/fn/NAME/``, and how.

``fileproc functions url NAME`` sets one (:func:`set_url`), ``--delete``
removes it; the API reads it on every request to ``/fn/NAME/...``
(:func:`get_url`; each API process trusts what it read for ``functions.alias_seconds``, so a change
reaches every API host within that, as a deploy does);
``fileproc functions delete`` removes it with the function.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import JSON, String, delete, select
from sqlalchemy.orm import Mapped, mapped_column

from fileproc.state.models import Base, utcnow
from fileproc.state.records import aware

if TYPE_CHECKING:
    from fileproc.state import Database

AUTH_TYPES = ("none", "token")
"""``none``: anyone may call the URL (Lambda's ``NONE``); ``token``: the admin token or the function's own
(fileproc's stand-in for Lambda's ``AWS_IAM``)."""


class FunctionUrlRow(Base):
    """A deployed function's URL: its auth type and the origins its CORS allows."""

    __tablename__ = "function_urls"

    function: Mapped[str] = mapped_column(String(64), primary_key=True)
    auth: Mapped[str] = mapped_column(String(16))
    cors: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


@dataclass(frozen=True)
class FunctionUrl:
    """How ``/fn/FUNCTION/`` answers: ``auth`` one of :data:`AUTH_TYPES`, ``cors`` the origins allowed (``*``:
    any; empty: no CORS headers at all, and OPTIONS goes to the function like any method)."""

    function: str
    auth: str
    cors: list[str] = field(default_factory=list)
    created_at: datetime | None = None
    updated_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"function": self.function, "auth": self.auth, "cors": list(self.cors),
                "created_at": self.created_at.isoformat() if self.created_at else None,
                "updated_at": self.updated_at.isoformat() if self.updated_at else None}


def _url_of(row: FunctionUrlRow) -> FunctionUrl:
    return FunctionUrl(row.function, row.auth, list(row.cors or []), aware(row.created_at), aware(row.updated_at))


def set_url(db: Database, function: str, *, auth: str, cors: list[str]) -> FunctionUrl:
    """Give ``function`` a URL, or change the one it has (its creation time stays)."""
    if auth not in AUTH_TYPES:
        raise ValueError(f"auth {auth!r}: one of {', '.join(AUTH_TYPES)}")
    with db.session() as s:
        now = db.now(s)
        row = s.get(FunctionUrlRow, function)
        if row is None:
            row = FunctionUrlRow(function=function, auth=auth, cors=list(cors), created_at=now, updated_at=now)
            s.add(row)
        else:
            row.auth, row.cors, row.updated_at = auth, list(cors), now
        s.flush()
        return _url_of(row)


def get_url(db: Database, function: str) -> FunctionUrl | None:
    """``function``'s URL; None if it has none."""
    with db.reading() as s:
        row = s.get(FunctionUrlRow, function)
        return _url_of(row) if row is not None else None


def delete_url(db: Database, function: str) -> bool:
    """Remove ``function``'s URL; whether it had one."""
    with db.session() as s:
        row = s.get(FunctionUrlRow, function)
        if row is None:
            return False
        s.execute(delete(FunctionUrlRow).where(FunctionUrlRow.function == function))
        return True


def list_urls(db: Database) -> list[FunctionUrl]:
    """Every function URL, by function name."""
    with db.reading() as s:
        return [_url_of(row) for row in s.scalars(select(FunctionUrlRow).order_by(FunctionUrlRow.function))]


__all__ = ["AUTH_TYPES", "FunctionUrl", "FunctionUrlRow", "delete_url", "get_url", "list_urls", "set_url"]
