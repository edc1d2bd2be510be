"""``fileproc_runners``: the warm runners the workers hold, by function and state.

Each worker's step processes say how many runners they hold
(:class:`fileproc.runtime.slots.Provisioner`, every few seconds, in the
state database); a scrape sums what the live ones last said, on every host.
``provisioned`` runners are kept warm on purpose (never reaped); ``warm``
ones were kept after a step and stop once idle for ``runtime.idle_seconds``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fileproc.errors import FileprocError
from fileproc.runtime.slots import RUNNERS_FRESH_SECONDS
from fileproc.state.deployments import runner_counts

if TYPE_CHECKING:
    from fileproc.service import Service

log = logging.getLogger(__name__)


class RunnerCollector(Collector):
    """``fileproc_runners{function, state}``: one series per function and state (provisioned, warm)."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("fileproc_runners", "Warm runners the workers hold (idle or running a step): "
                                   "provisioned ones are kept warm on purpose, warm ones stop once idle.",
                                   labels=["function", "state"])
        try:
            counts = runner_counts(self.service.db, RUNNERS_FRESH_SECONDS)
        except FileprocError as exc:
            log.warning("runner metrics: %s", exc)
            counts = {}
        for (function, state), count in sorted(counts.items()):
            family.add_metric([function, state], count)
        yield family


__all__ = ["RunnerCollector"]
