"""What functions printed: each attempt's log (its output, then Lambda's ``REPORT`` line), for ``fileproc logs``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import select

from fileproc.state.models import AttemptRow

if TYPE_CHECKING:
    from fileproc.state import Database


@dataclass(frozen=True)
class AttemptLog:
    """One logged attempt: its id, its job and step (with the id, its RequestId), and its log."""

    id: int
    job_id: int
    step_index: int
    log: str


def attempt_logs(db: Database, function: str, *, after: int = 0, attempt_id: int | None = None,
                 request_id: str | None = None, limit: int = 20) -> list[AttemptLog]:
    """The last ``limit`` logged attempts of ``function`` with ids above ``after``, oldest first.

    ``attempt_id``: only that attempt (a step's RequestId's last part); ``request_id``: only the invocation
    whose log names that RequestId (an invocation on an event: a stream's batch, a schedule's tick, a URL's
    request, whose RequestId is a UUID).
    """
    wanted = select(AttemptRow.id, AttemptRow.job_id, AttemptRow.step_index, AttemptRow.log).where(
        AttemptRow.function == function, AttemptRow.log.is_not(None), AttemptRow.id > after)
    if attempt_id is not None:
        wanted = wanted.where(AttemptRow.id == attempt_id)
    if request_id is not None:
        wanted = wanted.where(AttemptRow.log.contains(f"RequestId: {request_id}", autoescape=True))
    with db.reading() as s:
        rows = s.execute(wanted.order_by(AttemptRow.id.desc()).limit(limit)).all()
    return [AttemptLog(row.id, row.job_id, row.step_index, row.log or "") for row in reversed(rows)]


__all__ = ["AttemptLog", "attempt_logs"]
