"""The stream mappings' families: per partition, the lag (records and seconds: Lambda's IteratorAge) and counts.

Read when Prometheus scrapes: the engine's positions (one short connection
per mapping) and what the pollers recorded (:mod:`fileproc.state.streams`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fileproc.errors import FileprocError
from fileproc.streams.admin import status

if TYPE_CHECKING:
    from fileproc.service import Service

log = logging.getLogger(__name__)

COUNTERS = {
    "batches": "Invocations of the mapping's function (each try of a batch).",
    "records": "Records the function ran on successfully.",
    "filtered": "Records skipped by the mapping's filter.",
    "failed": "Records given up (dead letters).",
    "errors": "Invocations that failed (retried, or given up).",
}


class StreamCollector(Collector):
    """``fileproc_stream_*``: one series per mapping and partition."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        labels = ["stream", "partition"]
        lag = GaugeMetricFamily("fileproc_stream_lag_records", "Records after the committed position.", labels=labels)
        age = GaugeMetricFamily("fileproc_stream_lag_seconds",
                                "Age of the oldest record not yet committed (Lambda's IteratorAge).", labels=labels)
        flight = GaugeMetricFamily("fileproc_stream_in_flight", "Records in batches running now.", labels=labels)
        counters = {name: CounterMetricFamily(f"fileproc_stream_{name}", text, labels=labels)
                    for name, text in COUNTERS.items()}
        try:
            found = status(self.service)
        except FileprocError as exc:
            log.warning("stream metrics: %s", exc)
            found = []
        for mapping in found:
            for p in mapping["partitions"]:
                where = [mapping["name"], p["partition"]]
                if p["lag_records"] is not None:
                    lag.add_metric(where, p["lag_records"])
                if p["lag_seconds"] is not None:
                    age.add_metric(where, p["lag_seconds"])
                flight.add_metric(where, p["in_flight"])
                for name, family in counters.items():
                    family.add_metric(where, p[name])
        yield lag
        yield age
        yield flight
        yield from counters.values()


__all__ = ["StreamCollector"]
