"""Health first, on the overview: the broker, the database and storage, each up or down with the reason, and
every worker with its last heartbeat, queues and running steps.

The checks are the ones ``fileproc doctor`` makes (the storage's
``check``, a query on the database, a connection to the broker), asked with
a short deadline: a part that does not answer within :data:`DEADLINE`
seconds is shown down ("no answer within 3 s") while its check goes on in
the background. Results are kept :data:`FRESH_FOR` seconds, so a page
refreshed every few seconds does not open a broker connection each time.
Workers come from their heartbeats (:mod:`fileproc.state.heartbeats`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as NoAnswer
from dataclasses import dataclass, field
from typing import Any

from fileproc.errors import FileprocError, network_reason
from fileproc.service import Service
from fileproc.state.heartbeats import Worker, workers

DEADLINE = 3.0
FRESH_FOR = 10.0


@dataclass(frozen=True)
class Part:
    """One part fileproc needs, up or down, in plain words."""

    name: str
    ok: bool
    detail: str


@dataclass
class Health:
    parts: list[Part]
    workers: list[Worker]
    hosts: dict[str, list[Worker]] = field(default_factory=dict)
    problem: str | None = None  # why the workers could not be read

    @property
    def down(self) -> list[Part]:
        return [p for p in self.parts if not p.ok]

    @property
    def alive(self) -> list[Worker]:
        return [w for w in self.workers if not w.silent]


def _storage(service: Service) -> Part:
    settings = service.settings
    where = settings.storage.endpoint if settings.storage.backend == "s3" else str(settings.buckets_dir)
    service.storage.check()
    return Part("storage", True, f"{settings.storage.backend} at {where} is usable")


def _database(service: Service) -> Part:
    service.db.check()
    return Part("database", True, f"{service.settings.database_url.split(':', 1)[0]} answers")


def _broker(service: Service) -> Part:
    from fileproc.runtime.app import celery_app

    name = "embedded broker" if service.settings.embedded_broker else "broker"
    with celery_app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, interval_start=0.2, interval_step=0.2, interval_max=0.2,
                                     timeout=DEADLINE)
    return Part("broker", True, f"the {name} answers")


PROBES: dict[str, Callable[[Service], Part]] = {"broker": _broker, "database": _database, "storage": _storage}

_pool = ThreadPoolExecutor(max_workers=len(PROBES) * 2, thread_name_prefix="fileproc-health")
_lock = threading.Lock()
_known: dict[tuple[int, str], tuple[float, Part]] = {}
_asking: dict[tuple[int, str], Future[Part]] = {}


def _ask(service: Service, name: str) -> Part:
    try:
        return PROBES[name](service)
    except FileprocError as exc:
        return Part(name, False, str(exc))
    except Exception as exc:  # a driver's own error (kombu, redis, socket): said in plain words
        reason = network_reason(exc) or f"{type(exc).__name__}: {exc}"
        hint = " (it runs only while `fileproc serve` does)" if name == "broker" and \
            service.settings.embedded_broker else ""
        return Part(name, False, f"cannot reach the {name}{hint}: {reason}")


def parts(service: Service) -> list[Part]:
    """The broker, the database and storage, each as last seen (at most :data:`FRESH_FOR` s ago)."""
    now = time.monotonic()
    waiting: dict[str, Future[Part]] = {}
    found: dict[str, Part] = {}
    with _lock:
        for name in PROBES:
            key = (id(service), name)
            known = _known.get(key)
            if known is not None and now - known[0] < FRESH_FOR:
                found[name] = known[1]
                continue
            if key not in _asking:
                _asking[key] = _pool.submit(_ask, service, name)
            waiting[name] = _asking[key]
    deadline = now + DEADLINE
    for name, future in waiting.items():
        try:
            part = future.result(timeout=max(0.0, deadline - time.monotonic()))
        except NoAnswer:
            found[name] = Part(name, False, f"no answer within {DEADLINE:g} s")
            continue
        with _lock:
            _known[(id(service), name)] = (time.monotonic(), part)
            _asking.pop((id(service), name), None)
        found[name] = part
    return [found[name] for name in PROBES]


def health(service: Service) -> Health:
    """The parts and the workers, for the overview."""
    found = Health(parts(service), [])
    try:
        found.workers = workers(service.db)
    except FileprocError as exc:
        found.problem = f"cannot read the workers' heartbeats: {exc}"
    for worker in found.workers:
        found.hosts.setdefault(worker.host, []).append(worker)
    return found


def forget(service: Any) -> None:
    """Drop ``service``'s remembered results (tests, and a service being closed)."""
    with _lock:
        for key in [k for k in _known if k[0] == id(service)]:
            _known.pop(key, None)


__all__ = ["DEADLINE", "FRESH_FOR", "PROBES", "Health", "Part", "forget", "health", "parts"]
