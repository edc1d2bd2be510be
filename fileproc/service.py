"""The context every layer works with: settings, the state database, storage, and the function and pipeline resolvers.

A :class:`Service` knows no feature: what it can run and where jobs go are
plugged in by the composition root (:func:`fileproc.app.build`), which
builds one for ``serve``, ``api``, ``worker`` and the CLI alike.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from fileproc.config import Settings
from fileproc.errors import ConfigError, StorageError
from fileproc.functions.registry import Registry
from fileproc.functions.resolver import Functions, Pipelines
from fileproc.objects import Submit

if TYPE_CHECKING:
    from fileproc.events import ObjectEvent
    from fileproc.functions import FunctionSpec
    from fileproc.rules import Pipeline, Step
    from fileproc.state import Database
    from fileproc.storage import Storage


@dataclass(frozen=True)
class PeriodicTask:
    """Work every relay runs now and then, on a thread of its own (``run`` returns how much it did)."""

    name: str
    run: Callable[[Service], int]
    did: str  # what a count means, for the log: "delivered %d destination record(s)"


class Service:
    """The parts one fileproc process works with.

    ``functions`` says which function a step calls (:class:`~fileproc.functions.resolver.Functions`),
    ``routes`` which pipeline a job follows (:meth:`pipeline`); ``pipelines``
    are the configured ones (what events are matched against). ``submit``
    records events as jobs (:func:`fileproc.dispatch.submit_many`, plugged in
    by the composition root); ``periodic`` is what the relay runs besides
    sending due steps. Built from ``settings`` alone, it knows the configured
    pipelines and no function: enough for a process that only reads and
    writes state and storage (the search indexer's).
    """

    def __init__(self, settings: Settings, functions: Functions | None = None,
                 routes: Pipelines | None = None) -> None:
        self.settings = settings
        self.functions = functions or Functions(Registry())
        self.routes = routes or Pipelines(settings.pipelines)
        self.pipelines: dict[str, Pipeline] = self.routes.configured
        self.submit: Submit = _cannot_submit
        self.periodic: list[PeriodicTask] = []

    @cached_property
    def db(self) -> Database:
        from fileproc.state import Database

        return Database(self.settings.database_url, timeout=self.settings.database.timeout)

    @cached_property
    def storage(self) -> Storage:
        from fileproc.storage import open_storage

        return open_storage(self.settings)

    def after_fork(self) -> None:
        """In a forked worker process: drop connections shared with the parent."""
        if "db" in self.__dict__:
            self.db.after_fork()
        self.__dict__.pop("storage", None)

    def prepare_buckets(self) -> None:
        """Create every pipeline's output bucket (and, on local storage, its source bucket), and the functions'."""
        names = {p.output.bucket for p in self.pipelines.values() if "{" not in p.output.bucket}
        if self.settings.streams or self.settings.schedules:  # where their invocations' outputs go
            names.add(self.settings.functions.bucket)
        if self.settings.storage.backend == "local":
            names |= {p.match.bucket for p in self.pipelines.values() if not set("*?[") & set(p.match.bucket)}
        for name in sorted(names):
            try:
                self.storage.ensure_bucket(name)
            except StorageError as exc:
                logging.getLogger(__name__).warning("cannot create bucket %s: %s", name, exc)

    def pipeline(self, name: str) -> Pipeline | None:
        """The pipeline a job named ``name`` follows: a configured one, or one a source makes up (None: gone)."""
        return self.routes.get(name)

    def spec(self, step: Step) -> FunctionSpec:
        """The function ``step`` calls (FunctionNotFound if none)."""
        return self.functions.spec(step)

    def params_for(self, step: Step) -> dict[str, Any]:
        """What ``step``'s handler gets as ``context.params``."""
        return self.functions.params_for(step)

    def function_name(self, pipeline: str, step_index: int) -> str:
        """The function step ``step_index`` of ``pipeline`` runs ("?" if the pipeline is gone)."""
        found = self.pipeline(pipeline)
        if found is None or step_index >= len(found.steps):
            return "?"
        return self.functions.name_of(found.steps[step_index])

    def queue_for(self, step: Step) -> str:
        return self.functions.queue_for(step)

    def queues(self) -> list[str]:
        """Every queue a worker may need: each function's, and each step's override."""
        return self.functions.queues(self.pipelines.values())


def _cannot_submit(events: Iterable[ObjectEvent], *, send: bool = True, completed: bool = False) -> list[Any]:
    raise ConfigError("this service was built without a way to submit events (build it with fileproc.app.build)")


CELERY_CHATTER = (
    "celery.worker.strategy",             # "Task fileproc.run_step[<uuid>] received"
    "celery.app.trace",                   # "Task ...[<uuid>] succeeded in 0.2s" / "retry: Retry in 2s"
    "celery.worker.consumer.connection",  # "Connected to redis+socket://..."
)
"""Celery loggers whose INFO lines name task ids, not jobs: a worker shows them at DEBUG only."""


def setup_worker_logging(settings: Settings) -> None:
    """Logging for ``fileproc worker``: fileproc's own lines, without Celery's chatter.

    Sets up logging like every command, then hides Celery's per-task lines
    (unless ``log_level`` is DEBUG); the worker is started ``quiet`` (no
    banner). Celery's warnings and errors, and its one "ready." line, still show.
    """
    setup_logging(settings)
    if settings.log_level != "DEBUG":
        for name in CELERY_CHATTER:
            logging.getLogger(name).setLevel(logging.WARNING)


def setup_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
