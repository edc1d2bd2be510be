"""The service's parts, wired once from the settings.

The API, the CLI, the watcher and the workers all start from a
:class:`Service`: the state database, the storage backend, the registered
functions and the Celery app, configured the same way everywhere.
"""

from __future__ import annotations

import logging
from functools import cached_property
from typing import TYPE_CHECKING, Any

from fileproc.config import Settings
from fileproc.errors import FunctionNotFound, StorageError
from fileproc.functions import FunctionSpec
from fileproc.functions.registry import Registry
from fileproc.rules import Pipeline, Step

if TYPE_CHECKING:
    from fileproc.serverless.catalog import Catalog
    from fileproc.state import Database
    from fileproc.storage import Storage


class Service:
    """The parts one fileproc process works with, wired from ``settings``.

    Building it loads the functions (:class:`~fileproc.functions.registry.Registry`) and
    checks every pipeline step against them: an unknown function or a param
    its model refuses stops the start with a ConfigError naming the field.
    """

    def __init__(self, settings: Settings) -> None:
        from fileproc.runtime import app as celery  # imported here: Celery is slow to import

        self.settings = settings
        self.registry = Registry.for_settings(settings, deployed=lambda name: self.catalog.exists(name))
        self.functions: dict[str, FunctionSpec] = self.registry.specs()
        from fileproc.serverless.invocations import Pipelines

        # With the made-up pipeline of each direct invocation (POST /functions/NAME/invoke).
        self.pipelines: dict[str, Pipeline] = Pipelines({p.name: p for p in settings.pipelines},
                                                        settings.functions.bucket)
        celery.configure(settings)
        settings.data_dir.mkdir(parents=True, exist_ok=True)

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
        """Create every pipeline's output bucket (and, on local storage, its source bucket)."""
        names = {p.output.bucket for p in self.pipelines.values() if "{" not in p.output.bucket}
        if self.settings.storage.backend == "local":
            names |= {p.match.bucket for p in self.pipelines.values() if not set("*?[") & set(p.match.bucket)}
        for name in sorted(names):
            try:
                self.storage.ensure_bucket(name)
            except StorageError as exc:
                logging.getLogger(__name__).warning("cannot create bucket %s: %s", name, exc)

    @cached_property
    def catalog(self) -> Catalog:
        """The deployed user functions (``fileproc functions deploy``), resolved per step."""
        from fileproc.serverless.catalog import Catalog

        return Catalog(self)

    def spec(self, step: Step) -> FunctionSpec:
        """The function ``step`` calls: a registered one, else the deployed version it names now.

        FunctionNotFound if neither.
        """
        if step.function in self.registry:
            return self.registry.get(step.function)
        try:
            return self.catalog.spec(step.function)
        except FunctionNotFound:
            self.registry.get(step.function)  # raises, naming the registered functions
            raise

    def params_for(self, step: Step) -> dict[str, Any]:
        """What ``step``'s handler gets as ``context.params``.

        A plain dict (Lambda-style code indexes it): the step's params validated
        against the function's params model, with the model's defaults filled
        in, or the params as written for a function without a model.
        """
        if step.function not in self.registry:  # a deployed function: params are passed as written
            return dict(step.params)
        return self.registry.params_for(step)

    def function_name(self, pipeline: str, step_index: int) -> str:
        """The function step ``step_index`` of ``pipeline`` runs ("?" if the pipeline is gone)."""
        found = self.pipelines.get(pipeline)
        if found is None or step_index >= len(found.steps):
            return "?"
        function = found.steps[step_index].function
        return function if function in self.registry else function.partition(":")[0]  # a deployed one's name

    def queue_for(self, step: Step) -> str:
        if step.queue or step.function in self.registry:
            return step.queue or self.spec(step).queue
        from fileproc.serverless.catalog import USER_QUEUE

        return USER_QUEUE  # every deployed function's (sending a step never asks the database)

    def queues(self) -> list[str]:
        """Every queue a worker may need: each function's, and each step's override."""
        names = {spec.queue for spec in self.functions.values()}
        names |= {s.queue for p in self.pipelines.values() for s in p.steps if s.queue}
        from fileproc.serverless.catalog import USER_QUEUE

        return sorted(names | {USER_QUEUE})


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
