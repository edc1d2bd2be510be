"""Reserved and provisioned concurrency: a function's limit of steps at once, and its runners kept warm.

- :class:`ReservedSlot`: a unit of a function's limit of steps at once,
  everywhere, held while its step runs (``functions deploy --concurrency``);
- :class:`Provisioner`: in each of a worker's step processes, keeps the
  runners of functions with provisioned concurrency started ahead
  (``functions deploy --provisioned N``, ``runtime.provisioned`` for
  built-ins) and says how many runners the process holds, for ``/metrics``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import TYPE_CHECKING, Any

from fileproc.state.deployments import (
    forget_runners,
    give_slot,
    provisioned_functions,
    report_runners,
    take_slot,
)

if TYPE_CHECKING:
    from collections.abc import Hashable

    from fileproc.functions import FunctionSpec
    from fileproc.service import Service
    from fileproc.state import Database

log = logging.getLogger(__name__)

PROVISION_INTERVAL = 5.0
"""Seconds between two looks at which functions are provisioned (a deploy reaches a worker within this)."""

REPORT_EVERY = 6
"""A process says how many runners it holds when that changes, and at least every this many looks."""

RUNNERS_FRESH_SECONDS = PROVISION_INTERVAL * REPORT_EVERY * 2.5
"""What a process said about its runners counts this long (then it is taken for gone)."""

DIRECT_INVOCATION = "_invoke.async."
"""The pipeline name of an asynchronous direct invocation of a function (``POST /functions/NAME/invoke``),
followed by its name and an id: what a provisioned runner is started for when no pipeline runs its function."""


class ReservedSlot:
    """A unit of ``spec``'s reserved concurrency, held while its step runs (if it has a limit).

    Held at most ``seconds`` (the step's timeout plus a lease): a worker that
    dies holding one loses it then, as its step's lease runs out.
    """

    def __init__(self, db: Database, spec: FunctionSpec, holder: str, seconds: float) -> None:
        self.db, self.spec, self.holder, self.seconds = db, spec, holder, seconds
        self.held = False

    def take(self) -> bool:
        """Whether the step may run now (always, for a function without reserved concurrency)."""
        if not self.spec.concurrency:
            return True
        self.held = take_slot(self.db, self.spec.name, self.holder, self.seconds)
        return self.held

    def give(self) -> None:
        if self.held:
            give_slot(self.db, self.spec.name, self.holder)
            self.held = False


class Provisioner:
    """Keeps this process's provisioned runners started, and reports its runners, every few seconds.

    Runs in each process that runs steps (a worker's pool process), from its
    start: a provisioned function's first step there finds its runner warm.
    A deploy (a new live version) is picked up within
    :data:`PROVISION_INTERVAL`; the old version's runners become ordinary
    warm ones, stopped once idle.
    """

    def __init__(self, service: Service, interval: float = PROVISION_INTERVAL) -> None:
        self.service, self.interval = service, interval
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self._stopping = threading.Event()
        self._said: dict[tuple[str, str], int] | None = None
        self._looks = 0

    def start(self) -> Provisioner:
        threading.Thread(target=self._run, name="fileproc-provisioner", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        try:
            forget_runners(self.service.db, self.worker)
        except Exception as exc:  # the rows age out anyway
            log.debug("could not forget this process's runners: %s", exc)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.look()
            except Exception:  # the database is down, say: look again later
                log.warning("provisioned runners: cannot look now", exc_info=True)
            self._stopping.wait(self.interval)

    def wanted(self) -> dict[str, int]:
        """Provisioned runners by function: the built-ins' from the config, the deployed ones' from the database."""
        wanted = {name: count for name, count in self.service.settings.runtime.provisioned.items() if count}
        wanted.update(provisioned_functions(self.service.db))
        return wanted

    def look(self) -> None:
        """Start what provisioned runners are missing, let go of those no longer wanted, report the counts."""
        from fileproc.runtime.pool import pool

        keys: set[Hashable] = set()
        for name, count in self.wanted().items():
            try:
                keys.add(self._provision(name, count))
            except Exception as exc:  # one function that cannot start must not stop the others
                log.warning("cannot keep %d runner(s) of %r warm: %s", count, name, exc)
        pool().unprovision(lambda key, owner: owner is not self.service or key in keys)
        counts = pool().counts()
        self._looks += 1
        if counts != self._said or self._looks % REPORT_EVERY == 0:
            report_runners(self.service.db, self.worker, counts)
            self._said = counts

    def _provision(self, name: str, count: int) -> Hashable:
        from fileproc.events import ObjectEvent
        from fileproc.functions.steps import StepRequest
        from fileproc.rules import Step
        from fileproc.runtime.pool import pool

        service = self.service
        spec = service.spec(Step(function=name))
        kind = service.functions.kind(spec)
        # A step of the function as its kind would start its runner for one: of a pipeline that runs it
        # (or, for a function no pipeline names, a direct invocation's), on an object that need not exist.
        # Only how the runner starts is used; nothing is sent to it.
        pipeline, index = next(((p.name, i) for p in service.pipelines.values() for i, s in enumerate(p.steps)
                                if s.function.partition(":")[0] == name), (f"{DIRECT_INVOCATION}{name}.ahead", 0))
        event = ObjectEvent("provisioned", f"{name}/ahead").to_dict()
        request = StepRequest(f"provisioned-{name}", pipeline, index, event, None, spec.timeout, spec.memory_mb, "")
        start = kind.start(spec, request)
        key = (spec.name, spec.version, spec.memory_mb)  # as runner.execute keys a step's runner
        started = pool().provision(key, service, count, work=start.work, warm=start.warm, memory_mb=spec.memory_mb,
                                   spawn=start.spawn, idle_seconds=service.settings.runtime.idle_seconds)
        if started:
            log.info("started %d provisioned runner(s) of %s", started, name)
        return key


def keep_provisioned(service: Service, *, here: bool = False) -> None:
    """In a worker, before its pool starts: where steps run, a :class:`Provisioner` runs from the start.

    That is each pool process (prefork), or with ``here`` this process
    (a pool of threads), once the worker is ready.
    """
    from celery.signals import worker_process_init, worker_process_shutdown, worker_ready, worker_shutdown

    running: list[Provisioner] = []

    def started(**_: Any) -> None:  # (after the service's own after-fork handler: connected earlier)
        running.append(Provisioner(service).start())

    def stopping(**_: Any) -> None:
        for provisioner in running:
            provisioner.stop()

    (worker_ready if here else worker_process_init).connect(started, weak=False)
    (worker_shutdown if here else worker_process_shutdown).connect(stopping, weak=False)


__all__ = ["PROVISION_INTERVAL", "RUNNERS_FRESH_SECONDS", "Provisioner", "ReservedSlot", "keep_provisioned"]
