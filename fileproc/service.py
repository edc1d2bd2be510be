"""The service's parts, wired once from the settings.

The API, the CLI, the watcher and the workers all start from a
:class:`Service`: the state database, the storage backend, the registered
functions and the Celery app, configured the same way everywhere.
"""

from __future__ import annotations

import logging
from functools import cached_property

from fileproc.config import Settings
from fileproc.errors import ConfigError, StorageError
from fileproc.functions import FunctionSpec, get_function, load_functions
from fileproc.rules import Pipeline, Step
from fileproc.runtime import app as celery
from fileproc.state import Database
from fileproc.storage import Storage, open_storage


class Service:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.functions = load_functions(settings.functions.paths)
        for pipeline in settings.pipelines:
            for step in pipeline.steps:
                if step.function not in self.functions:
                    known = ", ".join(sorted(self.functions))
                    raise ConfigError(
                        f"pipelines.{pipeline.name}.steps: no function named {step.function!r} (known: {known})")
        self.pipelines: dict[str, Pipeline] = {p.name: p for p in settings.pipelines}
        celery.configure(settings)
        settings.data_dir.mkdir(parents=True, exist_ok=True)

    @cached_property
    def db(self) -> Database:
        return Database(self.settings.database_url)

    @cached_property
    def storage(self) -> Storage:
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

    def spec(self, step: Step) -> FunctionSpec:
        return get_function(step.function)

    def queue_for(self, step: Step) -> str:
        return step.queue or self.spec(step).queue

    def queues(self) -> list[str]:
        """Every queue a worker may need: each function's, and each step's override."""
        names = {spec.queue for spec in self.functions.values()}
        names |= {s.queue for p in self.pipelines.values() for s in p.steps if s.queue}
        return sorted(names)


def setup_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
