"""Prometheus metrics (``GET /metrics``): what the state database knows, plus the receiver's counters.

- :mod:`.database`: jobs, queues, attempts and drift, read from the state
  database when Prometheus scrapes (through :mod:`fileproc.state`'s running
  totals, so a scrape's cost does not grow with the history);
- :mod:`.receiver`: the receiver's counters (notifications received,
  recorded, unmatched, rejected ...), per API process, or summed over all of
  them in prometheus-client's multiprocess mode (``fileproc api --workers N``);
- :mod:`.streams`: each stream mapping's lag and counts, per partition;
- :class:`Metrics`: the page itself, both rendered in Prometheus's text format.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from fileproc.intake.webhook import Counters
from fileproc.metrics.database import StateCollector, queue_depths, recent_drift
from fileproc.metrics.receiver import (
    MULTIPROCESS_ENV,
    RECEIVER,
    ReceiverCollector,
    SharedCounters,
    multiprocess_dir,
)
from fileproc.metrics.runners import RunnerCollector
from fileproc.metrics.streams import StreamCollector
from fileproc.service import Service

METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """The ``/metrics`` page of one API process.

    Example::

        metrics = Metrics(service, counters)
        body = metrics.render()      # Prometheus text format
    """

    def __init__(self, service: Service, counters: Counters) -> None:
        self.state = StateCollector(service)
        self.streams = StreamCollector(service) if service.settings.streams else None
        self.runners = RunnerCollector(service)
        self.counters = counters

    def render(self) -> bytes:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self.state)
        registry.register(self.runners)
        if self.streams is not None:
            registry.register(self.streams)
        folder = multiprocess_dir()
        if folder:
            MultiProcessCollector(registry, folder)
        else:
            registry.register(ReceiverCollector(self.counters))
        return generate_latest(registry)


__all__ = ["METRICS_CONTENT_TYPE", "MULTIPROCESS_ENV", "RECEIVER", "Metrics", "SharedCounters", "StateCollector",
           "multiprocess_dir", "queue_depths", "recent_drift"]
