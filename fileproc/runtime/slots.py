"""Reserved concurrency: a unit of a function's limit of steps at once, everywhere, held while its step runs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fileproc.state.deployments import give_slot, take_slot

if TYPE_CHECKING:
    from fileproc.functions import FunctionSpec
    from fileproc.state import Database


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


__all__ = ["ReservedSlot"]
