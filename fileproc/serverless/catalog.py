"""Which deployed version a step runs: ``NAME`` (its ``live`` alias), ``NAME:VERSION`` or ``NAME:ALIAS``.

Resolved on every step, from the state database, so a deploy or a rollback
reaches every worker without a restart; an alias is trusted for
``functions.alias_seconds`` (default 2 s), a version number for good
(versions never change). The spec of a version is built once per worker
process: its handler (:class:`~.lambda_runtime.LambdaHandler`) says how its
warm runners start.

Each deployed function has a queue of its own, ``fn.NAME`` (:func:`queue_of`),
so a burst of one never queues another behind it: a worker serving the
deployed functions takes their queues in turn (kombu's Redis transport
rotates the queues it asks for after each message; RabbitMQ delivers from
each queue it consumes). ``user-functions`` in a worker's queue list stands
for all of them, those deployed after it started included
(:mod:`fileproc.runtime.lanes`), and is itself still drained: it is the queue
every deployed function shared before, so a message an older fileproc left
there still runs.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from fileproc.errors import FileprocError, FunctionNotFound
from fileproc.functions import FunctionSpec
from fileproc.sandbox import isolation
from fileproc.serverless import packages
from fileproc.serverless.environment import environment
from fileproc.serverless.lambda_runtime import LambdaHandler
from fileproc.serverless.names import looks_deployed, split
from fileproc.serverless.stepping import DEPLOYED
from fileproc.state.deployments import FunctionVersion, function_names, resolve

if TYPE_CHECKING:
    from fileproc.service import Service

USER_QUEUE = "user-functions"
"""In a worker's queue list, every deployed function's queue (now and later); also the queue all of them
shared before each had its own, still drained so that messages left there by an older fileproc run."""

QUEUE_PREFIX = "fn."


def queue_of(function: str) -> str:
    """The queue of the deployed function named ``function``: ``fn.NAME`` (a name is at most 64 letters,
    digits, ``-`` and ``_``: a valid Redis key and RabbitMQ queue name)."""
    return QUEUE_PREFIX + function


class Catalog:
    """A worker's view of the deployed functions: a :class:`~fileproc.functions.resolver.FunctionSource`."""

    queue = USER_QUEUE

    def queue_for(self, reference: str) -> str:
        """The queue of the function ``reference`` names, whichever its version (no I/O)."""
        return queue_of(split(reference)[0])

    def queues(self) -> list[str]:
        """The queue of every function deployed now (asks the database)."""
        return [queue_of(name) for name in function_names(self.service.db)]

    def __init__(self, service: Service) -> None:
        self.service = service
        self._resolved: dict[tuple[str, str], tuple[float, FunctionVersion]] = {}
        self._specs: dict[tuple[str, int], FunctionSpec] = {}
        self._lock = threading.Lock()
        self._prepared = False

    def version(self, reference: str) -> FunctionVersion:
        """The version ``reference`` names now (FunctionNotFound if none)."""
        name, qualifier = split(reference)
        now = time.monotonic()
        with self._lock:
            found = self._resolved.get((name, qualifier))
        if found is not None and (qualifier.isdigit() or now < found[0]):
            return found[1]
        version = resolve(self.service.db, name, qualifier)
        with self._lock:
            self._resolved[(name, qualifier)] = (now + self.service.settings.functions.alias_seconds, version)
        return version

    def claims(self, reference: str) -> bool:
        return looks_deployed(reference)

    def exists(self, reference: str) -> bool:
        if not looks_deployed(reference):
            return False
        try:
            self.version(reference)
        except FileprocError:  # not deployed, or no database to ask: the caller names what is known
            return False
        return True

    def spec(self, reference: str) -> FunctionSpec:
        """The spec of the version ``reference`` names now."""
        if not looks_deployed(reference):
            raise FunctionNotFound(f"no function named {reference!r}")
        version = self.version(reference)
        key = (version.function, version.version)
        with self._lock:
            spec = self._specs.get(key)
        if spec is None:
            settings = self.service.settings
            folder = packages.folder_for(settings.data_dir.resolve(), version.function, version.package_sha256,
                                         version.requirements)
            data_dir = settings.data_dir.resolve()
            shared = []  # besides its /tmp and its own scratch folder (under data_dir/scratch)
            if settings.storage.backend == "local":  # context.output writes the storage's own files
                shared += [settings.buckets_dir.resolve()]
            self._prepare_data_dir(data_dir, shared)
            # Out of its reach, even to read: fileproc's state, tokens, broker data, other functions'
            # code (all in data_dir, but its own folders), the config file, the worker's home.
            hidden = [data_dir, Path.home(), *([settings.config_file.resolve()] if settings.config_file else [])]
            handler = LambdaHandler(version, folder, environment(settings, version, folder), data_dir / "scratch",
                                    settings.functions.bucket, shared, hidden)
            spec = FunctionSpec(version.function, handler, queue=queue_of(version.function), kind=DEPLOYED,
                                timeout=version.timeout, memory_mb=version.memory_mb, retries=version.retries,
                                source=f"deployed {version.function}:{version.version}",
                                version=str(version.version), concurrency=version.concurrency)
            with self._lock:
                self._specs[key] = spec
        return spec

    def _prepare_data_dir(self, data_dir: Path, shared: list[Path]) -> None:
        # Once per process, before its first deployed runner: data_dir closed to runner users.
        if not self._prepared:
            isolation.prepare_data_dir(data_dir, shared)
            self._prepared = True


__all__ = ["QUEUE_PREFIX", "USER_QUEUE", "Catalog", "queue_of"]
