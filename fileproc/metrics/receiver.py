"""The receiver's counters on ``/metrics``: notifications received, recorded, unmatched, rejected ...

They live in each API process. With one process they are read from its
:class:`~fileproc.intake.webhook.Counters`; ``fileproc api --workers N`` turns
on prometheus-client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, a
folder of its own per start) and every scrape sums all processes' counts.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import Counter
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from fileproc.intake.webhook import Counters

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""prometheus-client's own switch (not a fileproc setting): set by ``fileproc api --workers N``."""

RECEIVER = {
    "received": ("fileproc_notifications_received_total", "Notification records received by POST /events."),
    "recorded": ("fileproc_notifications_recorded_total", "Notification records recorded (a pipeline takes them)."),
    "unmatched": ("fileproc_notifications_unmatched_total", "Notification records no pipeline takes (dropped)."),
    "rejected": ("fileproc_notifications_rejected_total", "Notification records refused (impossible key)."),
    "dropped": ("fileproc_notifications_gone_total", "Notification records whose object was gone at HEAD."),
    "requests": ("fileproc_webhook_requests_total", "POST /events requests with a valid token."),
    "busy": ("fileproc_webhook_busy_total", "POST /events answered 503 (overloaded or database unavailable)."),
    "too_large": ("fileproc_webhook_too_large_total", "POST /events answered 413."),
    "batches": ("fileproc_webhook_batches_total", "Transactions the receiver's group commit ran."),
}
"""Each :class:`Counters` field: its metric's name (``_total`` included) and help."""

_multiprocess_counters: dict[str, Counter] = {}


def multiprocess_dir() -> str | None:
    """The folder of prometheus-client's multiprocess mode, when it is on in this process."""
    return os.environ.get(MULTIPROCESS_ENV) or None


@dataclass
class SharedCounters(Counters):
    """The receiver's counters, also counted for the other API processes when several share a port."""

    def __post_init__(self) -> None:
        # Looked up once: the environment's lookup (a str encode and a dict) cost more than the count.
        self._shared = {name: _shared_counter(name) for name in RECEIVER} if multiprocess_dir() else None
        # (every shared counter made now shows from the start, at zero)

    def add(self, **counts: int) -> None:
        super().add(**counts)
        if self._shared is not None:  # prometheus-client's mmap'd values: a lock and a store, no system call
            for name, value in counts.items():
                if value:
                    self._shared[name].inc(value)


def _shared_counter(name: str) -> Counter:
    if name not in _multiprocess_counters:
        metric, help_text = RECEIVER[name]
        _multiprocess_counters[name] = Counter(metric.removesuffix("_total"), help_text, registry=None)
    return _multiprocess_counters[name]


class ReceiverCollector(Collector):
    """This process's receiver counters (one API process)."""

    def __init__(self, counters: Counters) -> None:
        self.counters = counters

    def collect(self) -> Iterator[Metric]:
        values = self.counters.to_dict()
        for name, (metric, help_text) in RECEIVER.items():
            yield CounterMetricFamily(metric.removesuffix("_total"), help_text, value=values.get(name, 0))


__all__ = ["MULTIPROCESS_ENV", "RECEIVER", "ReceiverCollector", "SharedCounters", "multiprocess_dir"]
