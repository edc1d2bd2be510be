"""Workers' heartbeats: which worker runs where, on which queues, and when it last said so.

Each ``fileproc worker`` writes its row every :data:`EVERY` seconds from a
thread of its own (started once Celery's pool is ready,
:func:`fileproc.runtime.app.run_worker`), and deletes it when it stops
cleanly. A row whose beat is older than :data:`SILENT_AFTER` is a worker
that died or lost the database; rows silent for a day are forgotten. Celery's
own ``inspect`` would ask every worker over the broker and wait for the
slowest; a row in the state database is read in a millisecond.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import JSON, Integer, String, delete, func, select
from sqlalchemy.orm import Mapped, mapped_column

from fileproc.errors import FileprocError
from fileproc.state.models import AttemptRow, AttemptStatus, Base, utcnow
from fileproc.state.records import aware

if TYPE_CHECKING:
    from fileproc.state import Database

log = logging.getLogger(__name__)

EVERY = 10.0
"""Seconds between a worker's beats."""
SILENT_AFTER = timedelta(seconds=3 * EVERY)
"""A worker not heard from for this long is shown as silent (dead, stuck or cut off from the database)."""
FORGET_AFTER = timedelta(days=1)


class WorkerBeatRow(Base):
    __tablename__ = "worker_heartbeats"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)  # Celery's hostname: fileproc-PID@HOST
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    queues: Mapped[list[str]] = mapped_column(JSON, default=list)
    concurrency: Mapped[int] = mapped_column(Integer, default=1)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    beat_at: Mapped[datetime] = mapped_column(default=utcnow)




@dataclass(frozen=True)
class Worker:
    """A worker as its last beat told it, with the steps it runs now (their attempts' functions)."""

    name: str
    host: str
    pid: int
    queues: list[str]
    concurrency: int
    started_at: datetime
    beat_at: datetime
    silent: bool
    running: list[dict[str, Any]] = field(default_factory=list)


def beat(db: Database, name: str, *, queues: list[str], concurrency: int, started_at: datetime) -> None:
    """Record that worker ``name`` (of this host and process) is alive now."""
    with db.session() as s:
        now = db.now(s)
        s.execute(delete(WorkerBeatRow).where(WorkerBeatRow.beat_at < now - FORGET_AFTER))
        row = s.get(WorkerBeatRow, name)
        if row is None:
            s.add(WorkerBeatRow(name=name, host=socket.gethostname(), pid=os.getpid(), queues=list(queues),
                                concurrency=concurrency, started_at=started_at, beat_at=now))
        else:
            row.queues, row.concurrency, row.beat_at = list(queues), concurrency, now


def forget(db: Database, name: str) -> None:
    """Worker ``name`` stopped cleanly."""
    with db.session() as s:
        s.execute(delete(WorkerBeatRow).where(WorkerBeatRow.name == name))


def workers(db: Database) -> list[Worker]:
    """Every worker heard from in the last day, by host and name, each with the steps it runs now."""
    with db.reading() as s:
        now = db.now(s)
        rows = list(s.scalars(select(WorkerBeatRow).where(WorkerBeatRow.beat_at >= now - FORGET_AFTER)
                              .order_by(WorkerBeatRow.host, WorkerBeatRow.name)))
        names = [r.name for r in rows]
        running: dict[str, list[dict[str, Any]]] = {}
        if names:
            for attempt in s.execute(select(AttemptRow.id, AttemptRow.job_id, AttemptRow.function,
                                            AttemptRow.worker, AttemptRow.started_at)
                                     .where(AttemptRow.status == AttemptStatus.RUNNING,
                                            AttemptRow.worker.in_(names)).order_by(AttemptRow.id)):
                running.setdefault(attempt.worker, []).append(
                    {"job": attempt.job_id, "function": attempt.function, "started_at": aware(attempt.started_at)})
        return [Worker(r.name, r.host, r.pid, list(r.queues or []), r.concurrency,
                       aware(r.started_at) or now, aware(r.beat_at) or now,
                       (aware(r.beat_at) or now) < now - SILENT_AFTER, running.get(r.name, []))
                for r in rows]


def running_steps(db: Database) -> int:
    """How many steps run now, on any worker."""
    with db.reading() as s:
        return int(s.scalar(select(func.count()).where(AttemptRow.status == AttemptStatus.RUNNING)) or 0)


class Heartbeat:
    """A thread that writes a worker's beat every :data:`EVERY` seconds until :meth:`stop`.

    It opens the database ``url`` itself (its own small pool, in its own
    thread): the worker's steps never wait for a beat, nor a beat for them.
    """

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        self.url, self.timeout = url, timeout
        self.name, self.concurrency = "", 1
        self.queues: Callable[[], list[str]] = list
        self._db: Database | None = None
        self._stop = threading.Event()
        self._started = utcnow()
        self._thread = threading.Thread(target=self._run, name="fileproc-heartbeat", daemon=True)

    def start(self, name: str, queues: Callable[[], list[str]], concurrency: int) -> Heartbeat:
        """Beat for worker ``name`` (Celery's hostname), which consumes ``queues()`` (asked at each beat)."""
        self.name, self.queues, self.concurrency = name, queues, concurrency
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        try:
            forget(self._database(), self.name)
        except FileprocError as exc:  # the row goes silent, then is forgotten
            log.debug("could not remove the heartbeat of %s: %s", self.name, exc)

    def _database(self) -> Database:
        if self._db is None:
            from fileproc.state import Database

            self._db = Database(self.url, timeout=self.timeout)
        return self._db

    def _run(self) -> None:
        while True:
            try:
                beat(self._database(), self.name, queues=self.queues(), concurrency=self.concurrency,
                     started_at=self._started)
            except FileprocError as exc:  # the dashboard shows the worker as silent meanwhile
                log.warning("worker heartbeat not recorded (will try again): %s", exc)
            if self._stop.wait(EVERY):
                return


__all__ = ["EVERY", "SILENT_AFTER", "Heartbeat", "Worker", "WorkerBeatRow", "beat", "forget", "running_steps",
           "workers"]
