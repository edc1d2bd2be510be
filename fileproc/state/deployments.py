"""Deployed user functions in the state database: immutable versions and their aliases.

``fileproc functions deploy`` adds a version (numbered 1, 2, ... per
function) and points the ``live`` alias at it; ``rollback`` points ``live``
at an older one. A pipeline step naming ``NAME`` runs ``NAME:live``;
``NAME:3`` a fixed version, ``NAME:ALIAS`` any alias. Resolving a name runs
on every step of a deployed function, so it is one prepared statement
(:class:`~fileproc.state.steps.Prepared`), and callers cache it briefly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Table, and_, bindparam, delete, func, or_, select, update

from fileproc.errors import FunctionNotFound
from fileproc.state.models import FunctionAliasRow, FunctionSlotRow, FunctionVersionRow, RunnerCountRow, utcnow
from fileproc.state.records import aware
from fileproc.state.steps import Prepared

if TYPE_CHECKING:
    from fileproc.state import Database

LIVE = "live"
"""The alias a bare function name runs, moved by every deploy and by ``rollback``."""

versions = cast(Table, FunctionVersionRow.__table__)
slots = cast(Table, FunctionSlotRow.__table__)
aliases = cast(Table, FunctionAliasRow.__table__)


@dataclass(frozen=True)
class FunctionVersion:
    """One immutable version of a deployed function."""

    function: str
    version: int
    handler: str
    timeout: float
    memory_mb: int
    concurrency: int | None
    retries: int
    env: dict[str, str]
    package_key: str
    package_sha256: str
    requirements: str
    created_at: datetime
    aliases: list[str] = field(default_factory=list)
    disk_mb: int = 512
    backoff: float = 2.0
    max_event_age: float = 21600.0
    on_success: str | None = None
    on_failure: str | None = None
    provisioned: int = 0  # runners kept warm per worker process, started ahead, never reaped

    def to_dict(self) -> dict[str, Any]:
        return {"function": self.function, "version": self.version, "handler": self.handler,
                "timeout": self.timeout, "memory_mb": self.memory_mb, "concurrency": self.concurrency,
                "retries": self.retries, "env": dict(self.env), "package_key": self.package_key,
                "package_sha256": self.package_sha256, "requirements": self.requirements,
                "created_at": self.created_at.isoformat(), "aliases": list(self.aliases), "disk_mb": self.disk_mb,
                "backoff": self.backoff, "max_event_age": self.max_event_age, "on_success": self.on_success,
                "on_failure": self.on_failure, "provisioned": self.provisioned}


def _version_of(row: Any, names: list[str] | None = None) -> FunctionVersion:
    return FunctionVersion(row.function, row.version, row.handler, row.timeout, row.memory_mb, row.concurrency,
                           row.retries, dict(row.env or {}), row.package_key, row.package_sha256,
                           row.requirements or "", aware(row.created_at) or utcnow(), names or [], row.disk_mb,
                           row.backoff, row.max_event_age, row.on_success, row.on_failure, row.provisioned or 0)


_BY_VERSION = Prepared(select(versions).where(versions.c.function == bindparam("p_function"),
                                              versions.c.version == bindparam("p_version")))
_BY_ALIAS = Prepared(select(versions).join(aliases, and_(aliases.c.function == versions.c.function,
                                                         aliases.c.version == versions.c.version))
                     .where(aliases.c.function == bindparam("p_function"), aliases.c.alias == bindparam("p_alias")))


def resolve(db: Database, function: str, qualifier: str = LIVE) -> FunctionVersion:
    """The version ``function:qualifier`` names (a number or an alias); FunctionNotFound if none."""
    with db.transaction() as tx:
        if qualifier.isdigit():
            row = _BY_VERSION.first(tx, {"p_function": function, "p_version": int(qualifier)})
        else:
            row = _BY_ALIAS.first(tx, {"p_function": function, "p_alias": qualifier})
    if row is None:
        raise FunctionNotFound(f"no deployed function {function}:{qualifier} (see `fileproc functions list`)")
    return _version_of(row)


def add_version(db: Database, function: str, *, handler: str, timeout: float, memory_mb: int,
                concurrency: int | None, retries: int, env: dict[str, str], package_key: str,
                package_sha256: str, requirements: str, disk_mb: int = 512, backoff: float = 2.0,
                max_event_age: float = 21600.0, on_success: str | None = None,
                on_failure: str | None = None, provisioned: int = 0) -> FunctionVersion:
    """Record the next version of ``function`` and point ``live`` at it, in one transaction."""
    with db.session() as s:
        number = (s.scalar(select(func.max(FunctionVersionRow.version))
                           .where(FunctionVersionRow.function == function)) or 0) + 1
        row = FunctionVersionRow(function=function, version=number, handler=handler, timeout=timeout,
                                 memory_mb=memory_mb, concurrency=concurrency, retries=retries, env=dict(env),
                                 disk_mb=disk_mb, backoff=backoff, max_event_age=max_event_age,
                                 on_success=on_success, on_failure=on_failure, provisioned=provisioned or None,
                                 package_key=package_key, package_sha256=package_sha256,
                                 requirements=requirements, created_at=db.now(s))
        s.add(row)
        _point(s, db, function, LIVE, number)
        _size_slots(s, function, concurrency)
        s.flush()
        return _version_of(row, [LIVE])


def set_alias(db: Database, function: str, alias: str, version: int) -> FunctionVersion:
    """Point ``alias`` of ``function`` at ``version`` (which must exist)."""
    with db.session() as s:
        row = s.scalars(select(FunctionVersionRow).where(FunctionVersionRow.function == function,
                                                         FunctionVersionRow.version == version)).one_or_none()
        if row is None:
            raise FunctionNotFound(f"no version {version} of function {function!r}")
        _point(s, db, function, alias, version)
        if alias == LIVE:
            _size_slots(s, function, row.concurrency)
        return _version_of(row)


def _point(s: Any, db: Database, function: str, alias: str, version: int) -> None:
    row = s.get(FunctionAliasRow, (function, alias))
    if row is None:
        s.add(FunctionAliasRow(function=function, alias=alias, version=version, updated_at=db.now(s)))
    else:
        row.version, row.updated_at = version, db.now(s)


def list_versions(db: Database, function: str | None = None) -> list[FunctionVersion]:
    """Every version (of ``function``, or of all), oldest first, each with the aliases pointing at it."""
    with db.reading() as s:
        query = select(FunctionVersionRow)
        named = select(FunctionAliasRow)
        if function is not None:
            query = query.where(FunctionVersionRow.function == function)
            named = named.where(FunctionAliasRow.function == function)
        pointed: dict[tuple[str, int], list[str]] = {}
        for alias in s.scalars(named):
            pointed.setdefault((alias.function, alias.version), []).append(alias.alias)
        rows = s.scalars(query.order_by(FunctionVersionRow.function, FunctionVersionRow.version))
        return [_version_of(r, sorted(pointed.get((r.function, r.version), []))) for r in rows]


def function_names(db: Database) -> list[str]:
    """The name of every function with a version deployed (a worker asks every second: names only)."""
    with db.reading() as s:
        return list(s.scalars(select(FunctionVersionRow.function).distinct().order_by(FunctionVersionRow.function)))


def dead_letters(db: Database, function: str | None = None, *, replayed: bool = False) -> list[dict[str, Any]]:
    """Dead-letter records (of ``function``), oldest first; those not replayed yet unless ``replayed``."""
    from fileproc.state.models import DeadLetterRow

    with db.reading() as s:
        query = select(DeadLetterRow)
        if function:
            query = query.where(DeadLetterRow.function == function)
        if not replayed:
            query = query.where(DeadLetterRow.replayed_at.is_(None))
        return [{"id": r.id, "job": r.job_id, "function": r.function, "version": r.version,
                 "request_id": r.request_id, "condition": r.condition, "error": r.error, "record": r.record,
                 "created_at": (aware(r.created_at) or utcnow()).isoformat(),
                 "replayed_at": r.replayed_at.isoformat() if r.replayed_at else None}
                for r in s.scalars(query.order_by(DeadLetterRow.id))]


def mark_replayed(db: Database, letter_id: int) -> None:
    from fileproc.state.models import DeadLetterRow

    with db.session() as s:
        s.execute(update(DeadLetterRow).where(DeadLetterRow.id == letter_id).values(replayed_at=db.now(s))
                  .execution_options(synchronize_session=False))


def new_token(db: Database, function: str) -> str:
    """A new invoke token for ``function`` (replacing its old one); only its hash is kept."""
    import hashlib
    import secrets

    from fileproc.state.models import FunctionTokenRow

    token = f"fn-{function}-{secrets.token_urlsafe(24)}"
    digest = hashlib.sha256(token.encode()).hexdigest()
    with db.session() as s:
        row = s.get(FunctionTokenRow, function)
        if row is None:
            s.add(FunctionTokenRow(function=function, token_sha256=digest, created_at=db.now(s)))
        else:
            row.token_sha256, row.created_at = digest, db.now(s)
    return token


def token_matches(db: Database, function: str, token: str) -> bool:
    """Whether ``token`` is ``function``'s invoke token."""
    import hashlib
    import hmac

    from fileproc.state.models import FunctionTokenRow

    if not token:
        return False
    with db.reading() as s:
        row = s.get(FunctionTokenRow, function)
        expected = row.token_sha256 if row else ""
    return bool(expected) and hmac.compare_digest(hashlib.sha256(token.encode()).hexdigest(), expected)


def delete_function(db: Database, function: str) -> list[FunctionVersion]:
    """Forget every version and alias of ``function``; the versions it had."""
    gone = list_versions(db, function)
    with db.session() as s:
        s.execute(delete(FunctionAliasRow).where(FunctionAliasRow.function == function))
        s.execute(delete(FunctionSlotRow).where(FunctionSlotRow.function == function))
        from fileproc.state.models import FunctionTokenRow

        s.execute(delete(FunctionTokenRow).where(FunctionTokenRow.function == function))
        s.execute(delete(FunctionVersionRow).where(FunctionVersionRow.function == function))
    return gone


# --- reserved concurrency ----------------------------------------------------------------------


def _size_slots(s: Any, function: str, concurrency: int | None) -> None:
    """K slot rows for a function whose live version reserves K (none without a limit)."""
    existing = set(s.scalars(select(FunctionSlotRow.slot).where(FunctionSlotRow.function == function)))
    wanted = set(range(concurrency or 0))
    if existing - wanted:
        s.execute(delete(FunctionSlotRow).where(FunctionSlotRow.function == function,
                                                FunctionSlotRow.slot.in_(sorted(existing - wanted))))
    for slot in sorted(wanted - existing):
        s.add(FunctionSlotRow(function=function, slot=slot))


_FREE = or_(slots.c.holder.is_(None), slots.c.until < bindparam("p_now"))
# The freedom condition is in the outer WHERE too: on PostgreSQL a second worker racing for the
# same slot re-checks it after the first one's commit, and takes nothing.
_TAKE_SLOT = Prepared(update(slots).where(
    slots.c.function == bindparam("p_function"), _FREE,
    slots.c.slot == select(func.min(slots.c.slot)).where(slots.c.function == bindparam("p_function"), _FREE)
    .scalar_subquery(),
).values(holder=bindparam("p_holder"), until=bindparam("p_until")))
_GIVE_SLOT = Prepared(update(slots).where(slots.c.function == bindparam("p_function"),
                                          slots.c.holder == bindparam("p_holder")).values(holder=None, until=None))


def take_slot(db: Database, function: str, holder: str, seconds: float) -> bool:
    """Take a free slot of ``function``'s reserved concurrency for ``seconds`` at most; False if none is free."""
    from fileproc.state.steps import now

    with db.transaction() as tx:
        at = now(tx)
        return bool(_TAKE_SLOT.rowcount(tx, {"p_function": function, "p_holder": holder, "p_now": at,
                                             "p_until": at + timedelta(seconds=seconds)}))


def give_slot(db: Database, function: str, holder: str) -> None:
    """Give back the slot ``holder`` took."""
    with db.transaction() as tx:
        _GIVE_SLOT.rowcount(tx, {"p_function": function, "p_holder": holder})


# --- provisioned and warm runners -----------------------------------------------------------------


_PROVISIONED = Prepared(select(versions.c.function, versions.c.provisioned)
                        .join(aliases, and_(aliases.c.function == versions.c.function,
                                            aliases.c.version == versions.c.version))
                        .where(aliases.c.alias == LIVE, versions.c.provisioned > 0))


def provisioned_functions(db: Database) -> dict[str, int]:
    """Deployed functions whose live version keeps runners warm: how many, by name."""
    with db.transaction() as tx:
        return {row.function: row.provisioned for row in _PROVISIONED.rows(tx, {})}


def report_runners(db: Database, worker: str, counts: dict[tuple[str, str], int]) -> None:
    """Say how many runners ``worker`` (a process) holds now, by (function, state); replaces what it said before."""
    with db.session() as s:
        s.execute(delete(RunnerCountRow).where(RunnerCountRow.worker == worker))
        at = db.now(s)
        for (function, state), count in sorted(counts.items()):
            s.add(RunnerCountRow(worker=worker, function=function, state=state, count=count, updated_at=at))


def forget_runners(db: Database, worker: str) -> None:
    """``worker`` (a process) is stopping: it holds no runner any more."""
    with db.session() as s:
        s.execute(delete(RunnerCountRow).where(RunnerCountRow.worker == worker))


def runner_counts(db: Database, fresh_seconds: float) -> dict[tuple[str, str], int]:
    """Runners every live worker process holds, by (function, state): what each said within ``fresh_seconds``."""
    with db.reading() as s:
        since = db.now(s) - timedelta(seconds=fresh_seconds)
        rows = s.execute(select(RunnerCountRow.function, RunnerCountRow.state, func.sum(RunnerCountRow.count))
                         .where(RunnerCountRow.updated_at >= since)
                         .group_by(RunnerCountRow.function, RunnerCountRow.state))
        return {(function, state): int(total or 0) for function, state, total in rows}


__all__ = ["LIVE", "FunctionVersion", "add_version", "dead_letters", "delete_function", "forget_runners",
           "function_names", "give_slot", "list_versions", "mark_replayed", "new_token", "provisioned_functions",
           "report_runners", "resolve", "runner_counts", "set_alias", "take_slot", "token_matches"]
