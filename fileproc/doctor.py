"""``fileproc doctor``: check that what the settings point at really works."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from fileproc.config import Settings
from fileproc.errors import FileprocError


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def _service_check(settings: Settings) -> tuple[Check, object | None]:
    from fileproc.service import Service

    try:
        service = Service(settings)
    except FileprocError as exc:
        return Check("functions", False, str(exc)), None
    names = ", ".join(sorted(service.functions))
    return Check("functions", True, f"{len(service.functions)} registered ({names})"), service


def _storage(settings: Settings) -> Check:
    from fileproc.storage import open_storage

    where = settings.storage.endpoint if settings.storage.backend == "s3" else str(settings.buckets_dir)
    try:
        open_storage(settings).check()
    except FileprocError as exc:
        return Check("storage", False, str(exc))
    return Check("storage", True, f"{settings.storage.backend} at {where} is usable")


def _database(settings: Settings) -> Check:
    from fileproc.state import Database

    try:
        Database(settings.database_url).check()
    except FileprocError as exc:
        return Check("database", False, str(exc))
    kind = settings.database_url.split(":", 1)[0]
    return Check("database", True, f"{kind} answers and has fileproc's tables")


def _broker(settings: Settings) -> Check:
    from fileproc.runtime.app import celery_app, configure

    configure(settings)
    name = "embedded broker" if settings.embedded_broker else "broker"
    try:
        with celery_app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=5)
    except Exception as exc:
        hint = " (it runs only while `fileproc serve` does)" if settings.embedded_broker else ""
        return Check("broker", False, f"cannot reach the {name}{hint}: {type(exc).__name__}")
    return Check("broker", True, f"the {name} answers")


def run_checks(settings: Settings) -> Iterator[Check]:
    source = settings.config_file or "no config file (embedded defaults)"
    yield Check("config", True, f"{source}; {len(settings.pipelines)} pipeline(s)")
    check, _ = _service_check(settings)
    yield check
    yield _storage(settings)
    yield _database(settings)
    yield _broker(settings)
