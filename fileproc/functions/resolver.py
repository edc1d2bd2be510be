"""Which function a step runs, and which pipeline a job follows: the resolvers the service holds.

:class:`Functions` answers "which function does this step call?" from the
service's :class:`~fileproc.functions.registry.Registry` first, then from
its sources (the deployed catalog is one: :class:`FunctionSource`), and
holds the kinds of function (:mod:`fileproc.functions.kinds`).
:class:`Pipelines` answers "which pipeline is this job's?" from the
configured ones, then from its sources (a direct invocation's one-step
pipeline is made up by one). Both are filled by the composition root
(:mod:`fileproc.app`); nothing here knows a particular source or kind.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

from fileproc.errors import FunctionNotFound

if TYPE_CHECKING:
    from fileproc.functions import FunctionSpec
    from fileproc.functions.kinds import FunctionKind
    from fileproc.functions.registry import Registry
    from fileproc.rules import Pipeline, Step

class FunctionSource(Protocol):
    """Functions found outside the registry, by a reference a step names (``NAME[:QUALIFIER]``).

    An implementation SHALL answer :meth:`claims` and :meth:`queue_for`
    without I/O (they decide the queue a step is sent to) and SHALL raise
    FunctionNotFound from :meth:`spec` for a reference it does not know now.
    Each of its functions MAY have a queue of its own (a burst of one then
    never waits behind another): :meth:`queues` lists them as they are now.
    """

    queue: str
    """The name that stands for all of this source's queues in a worker's queue list (those of functions
    added later too); a worker given it also drains a queue of that name."""

    def queue_for(self, reference: str) -> str:
        """The queue of the function ``reference`` names (no I/O)."""
        ...

    def queues(self) -> list[str]:
        """The queues of its functions now (may ask the database)."""
        ...

    def claims(self, reference: str) -> bool:
        """Whether ``reference`` can name one of this source's functions (no I/O)."""
        ...

    def exists(self, reference: str) -> bool:
        """Whether ``reference`` names one of its functions now (False when it cannot tell)."""
        ...

    def spec(self, reference: str) -> FunctionSpec:
        """The function ``reference`` names now."""
        ...


class Functions:
    """The functions one service can run: its registry, then its sources; and their kinds."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._sources: list[FunctionSource] = []
        self._kinds: dict[str, FunctionKind] = {}

    def add_source(self, source: FunctionSource) -> None:
        self._sources.append(source)

    def add_kind(self, kind: FunctionKind) -> None:
        self._kinds[kind.name] = kind

    def kind(self, spec: FunctionSpec) -> FunctionKind:
        """The kind ``spec`` is of."""
        return self._kinds[spec.kind]

    def exists(self, reference: str) -> bool:
        """Whether ``reference`` names a function outside the registry now (the registry's check asks)."""
        return any(source.claims(reference) and source.exists(reference) for source in self._sources)

    def spec(self, step: Step) -> FunctionSpec:
        """The function ``step`` calls: a registered one, else the one a source names now (FunctionNotFound)."""
        if step.function in self.registry:
            return self.registry.get(step.function)
        for source in self._sources:
            if source.claims(step.function):
                try:
                    return source.spec(step.function)
                except FunctionNotFound:
                    break
        return self.registry.get(step.function)  # raises, naming the registered functions

    def params_for(self, step: Step) -> dict[str, Any]:
        """What ``step``'s handler gets as ``context.params`` (a plain dict, as Lambda-style code indexes it).

        A registered function's params are validated against its model with
        its defaults filled in; another's are passed as written.
        """
        if step.function not in self.registry:
            return dict(step.params)
        return self.registry.params_for(step)

    def name_of(self, step: Step) -> str:
        """The name of the function ``step`` calls (``hello`` of ``hello:live``), without I/O."""
        if step.function in self.registry:
            return step.function
        return step.function.partition(":")[0]

    def queue_for(self, step: Step) -> str:
        """The queue ``step`` is sent to (never asks the database)."""
        if step.queue:
            return step.queue
        if step.function not in self.registry:
            for source in self._sources:
                if source.claims(step.function):
                    return source.queue_for(step.function)
        return self.registry.get(step.function).queue

    def queues(self, pipelines: Iterable[Pipeline]) -> list[str]:
        """Every queue a worker may need: each function's, each step's override, and each source's name
        (which stands for its functions' queues: :meth:`expand`). No I/O."""
        names = {spec.queue for spec in self.registry.specs().values()}
        names |= {s.queue for p in pipelines for s in p.steps if s.queue}
        return sorted(names | {source.queue for source in self._sources})

    def lanes(self) -> dict[str, list[str]]:
        """Each source's name (``user-functions``), and the queues of the functions it has now (may ask the
        database)."""
        return {source.queue: source.queues() for source in self._sources}

    def expand(self, names: Iterable[str]) -> list[str]:
        """The queues a worker given ``names`` consumes now: each name, and for a source's name
        (``user-functions``) each of that source's functions' queues too (may ask the database)."""
        found = set(names)
        for source in self._sources:
            if source.queue in found:
                found.update(source.queues())
        return sorted(found)


class PipelineSource(Protocol):
    """Pipelines made up on request (never matched against an event), by name."""

    def get(self, name: str) -> Pipeline | None:
        """The pipeline ``name`` (None: not one of this source's)."""
        ...


class Pipelines:
    """The pipelines one service knows: the configured ones, then those its sources make up by name."""

    def __init__(self, configured: Iterable[Pipeline]) -> None:
        self.configured: dict[str, Pipeline] = {p.name: p for p in configured}
        self._sources: list[PipelineSource] = []

    def add_source(self, source: PipelineSource) -> None:
        self._sources.append(source)

    def get(self, name: str) -> Pipeline | None:
        """The pipeline a job named ``name`` follows (None: no longer configured)."""
        found = self.configured.get(name)
        for source in self._sources:
            if found is not None:
                break
            found = source.get(name)
        return found


__all__ = ["FunctionSource", "Functions", "PipelineSource", "Pipelines"]
