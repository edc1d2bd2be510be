"""Prometheus metrics (``GET /metrics``): what the state database knows, plus the receiver's counters.

Jobs, queues, attempts and drift are read from the state database when
Prometheus scrapes, so every API process (``--workers N``, or several hosts)
answers the same totals, and nothing is lost when a process restarts:

- jobs per pipeline and status, and jobs created per pipeline: one
  ``GROUP BY`` over the jobs table;
- queue depth and the age of the oldest waiting job per queue: queued jobs
  only (the status index);
- attempts per function and status, cold starts and warm reuses, and
  histograms of step duration, peak memory and event age (the object's
  upload to the start of its step): accumulated by each process from the
  attempts it has not read yet (a range of the primary key), so a scrape reads
  only the attempts that ended since the last one. A process's first scrape
  reads the whole table once, 5,000 rows a transaction (about 10 s per
  100,000 attempts on a busy 2-core machine); a scrape that times out meanwhile
  loses nothing, the next one goes on from there;
- reconciliation drift per bucket over the last day (the drift table).

The receiver's counters (notifications received, recorded, unmatched,
rejected ...) live in each API process. With one process they are read from
its :class:`~fileproc.intake.webhook.Counters`; ``fileproc api --workers N``
turns on prometheus-client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``,
a folder of its own per start) and every scrape sums all processes' counts.
"""

from __future__ import annotations

import bisect
import os
import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from fileproc.errors import FunctionNotFound
from fileproc.intake.webhook import Counters
from fileproc.service import Service
from fileproc.state.models import AttemptRow, AttemptStatus, DriftRow, JobRow, JobStatus
from fileproc.state.records import aware

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""prometheus-client's own switch (not a fileproc setting): set by ``fileproc api --workers N``."""

METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST

DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)
MEMORY_BUCKETS = tuple(mb * 1024 * 1024 for mb in (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192))
AGE_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 6 * 3600, 86400)
DRIFT_WINDOW = timedelta(days=1)
SETTLE = timedelta(seconds=15)
"""Rows older than this are taken as final in id order: no transaction of fileproc's stays open this long."""

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


class SharedCounters(Counters):
    """The receiver's counters, also counted for the other API processes when several share a port."""

    def __post_init__(self) -> None:
        if multiprocess_dir():  # every counter shows from the start, at zero
            for name in RECEIVER:
                _shared_counter(name)

    def add(self, **counts: int) -> None:
        super().add(**counts)
        if multiprocess_dir():
            for name, value in counts.items():
                if value:
                    _shared_counter(name).inc(value)


def _shared_counter(name: str) -> Counter:
    if name not in _multiprocess_counters:
        metric, help_text = RECEIVER[name]
        _multiprocess_counters[name] = Counter(metric.removesuffix("_total"), help_text, registry=None)
    return _multiprocess_counters[name]


class _ReceiverCollector(Collector):
    """This process's receiver counters (one API process)."""

    def __init__(self, counters: Counters) -> None:
        self.counters = counters

    def collect(self) -> Iterator[Metric]:
        values = self.counters.to_dict()
        for name, (metric, help_text) in RECEIVER.items():
            yield CounterMetricFamily(metric.removesuffix("_total"), help_text, value=values.get(name, 0))


class _Histogram:
    """Cumulative bucket counts and a sum, per label value."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts: dict[str, list[int]] = defaultdict(lambda: [0] * (len(bounds) + 1))
        self.sums: dict[str, float] = defaultdict(float)

    def observe(self, label: str, value: float) -> None:
        self.counts[label][bisect.bisect_left(self.bounds, value)] += 1  # the first bound >= value
        self.sums[label] += value

    def family(self, name: str, help_text: str, label: str) -> HistogramMetricFamily:
        family = HistogramMetricFamily(name, help_text, labels=[label])
        for value, counts in sorted(self.counts.items()):
            running, buckets = 0, []
            for bound, count in zip([*map(str, self.bounds), "+Inf"], counts, strict=True):
                running += count
                buckets.append((bound, running))
            family.add_metric([value], buckets, self.sums[value])
        return family


class _Attempts:
    """Attempt totals, accumulated from the attempts that ended since the last scrape.

    Read by primary key: ``after`` is the id up to which every attempt has
    been seen; it only moves past attempts that started :data:`SETTLE` ago, as
    on PostgreSQL a smaller id may commit after a larger one. Above it,
    ``counted`` holds the ids already counted; ``running`` the ids (at or
    below it) still running when seen, looked at again on each scrape. Each
    attempt is counted once, when it has ended (any status).
    """

    BATCH = 5000

    def __init__(self) -> None:
        self.after = 0
        self.counted: set[int] = set()
        self.running: set[int] = set()
        self.statuses: dict[tuple[str, str], int] = defaultdict(int)
        self.cold: dict[str, int] = defaultdict(int)
        self.warm: dict[str, int] = defaultdict(int)
        self.duration = _Histogram(DURATION_BUCKETS)
        self.memory = _Histogram(MEMORY_BUCKETS)
        self.age = _Histogram(AGE_BUCKETS)

    def update(self, service: Service) -> None:
        # Only the event's time, extracted by the database: decoding whole events was most of the cost.
        query = (select(AttemptRow.id, AttemptRow.function, AttemptRow.status, AttemptRow.duration_ms,
                        AttemptRow.peak_memory_kb, AttemptRow.cold_start, AttemptRow.started_at,
                        JobRow.event["time"].as_string().label("event_time"))
                 .join(JobRow, JobRow.id == AttemptRow.job_id))
        with service.db.reading() as s:
            settled = service.db.now(s) - SETTLE
            if self.running:  # a few: as many as run at once
                for row in s.execute(query.where(AttemptRow.id.in_(sorted(self.running)))).all():
                    if row.status != AttemptStatus.RUNNING:
                        self._count(row)
                        self.running.discard(row.id)
        cursor, moving = self.after, True
        while True:  # a transaction per batch: a first scrape of a long history never holds one open long
            with service.db.reading() as s:
                rows = s.execute(query.where(AttemptRow.id > cursor).order_by(AttemptRow.id)
                                 .limit(self.BATCH)).all()
            for row in rows:
                ended = row.status != AttemptStatus.RUNNING
                if ended and row.id not in self.counted:
                    self._count(row)
                    self.counted.add(row.id)
                started = aware(row.started_at)
                moving = moving and started is not None and started < settled
                if moving:  # everything up to here is settled: forget it, keep watching what runs
                    self.after = row.id
                    self.counted.discard(row.id)
                    if not ended:
                        self.running.add(row.id)
            if len(rows) < self.BATCH:
                return
            cursor = rows[-1].id

    def _count(self, row: Any) -> None:
        self.statuses[(row.function, row.status)] += 1
        if row.cold_start is not None:
            (self.cold if row.cold_start else self.warm)[row.function] += 1
        if row.duration_ms is not None:
            self.duration.observe(row.function, row.duration_ms / 1000)
        if row.peak_memory_kb is not None:
            self.memory.observe(row.function, row.peak_memory_kb * 1024)
        uploaded = _event_time(row.event_time)
        started = aware(row.started_at)
        if uploaded is not None and started is not None:
            self.age.observe(row.function, max(0.0, (started - uploaded).total_seconds()))

    def collect(self) -> Iterator[Metric]:
        attempts = CounterMetricFamily("fileproc_attempts", "Step attempts that ended, by function and status.",
                                       labels=["function", "status"])
        for (function, status), count in sorted(self.statuses.items()):
            attempts.add_metric([function, status], count)
        yield attempts
        cold = CounterMetricFamily("fileproc_cold_starts", "Attempts that started a new runner process.",
                                   labels=["function"])
        warm = CounterMetricFamily("fileproc_warm_starts", "Attempts that reused a warm runner process.",
                                   labels=["function"])
        for function, count in sorted(self.cold.items()):
            cold.add_metric([function], count)
        for function, count in sorted(self.warm.items()):
            warm.add_metric([function], count)
        yield cold
        yield warm
        yield self.duration.family("fileproc_step_duration_seconds", "How long step attempts ran.", "function")
        yield self.memory.family("fileproc_step_peak_memory_bytes", "Peak memory of step attempts.", "function")
        yield self.age.family("fileproc_event_age_seconds",
                              "From the object's upload (its event time) to the start of a step on it.", "function")


def _event_time(value: str | None) -> datetime | None:
    try:
        return aware(datetime.fromisoformat(value)) if value else None
    except ValueError:
        return None


class StateCollector(Collector):
    """Everything the state database knows, read at scrape time."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.attempts = _Attempts()
        self.jobs_after = 0
        self.created: dict[str, int] = defaultdict(int)
        self.lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        with self.lock:  # two scrapes at once (two Prometheus servers) take turns
            jobs = list(self._jobs())
            self.attempts.update(self.service)
            attempts = list(self.attempts.collect())
        yield from jobs
        yield from self._queues()
        yield from attempts
        yield from self._drift()

    def _jobs(self) -> Iterable[Metric]:
        # Jobs are never deleted: those created per pipeline are summed by primary key range (settled
        # ones kept, the last SETTLE seconds' counted afresh); every status but succeeded is read
        # through the status index; succeeded is the rest. A scrape reads no succeeded job twice.
        unfinished = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.FAILED, JobStatus.SKIPPED)
        with self.service.db.reading() as s:
            settled = self.service.db.now(s) - SETTLE
            upto = s.scalar(select(func.max(JobRow.id)).where(JobRow.id > self.jobs_after,
                                                               JobRow.created_at < settled))
            if upto is not None:
                for pipeline, count in s.execute(select(JobRow.pipeline, func.count())
                                                 .where(JobRow.id > self.jobs_after, JobRow.id <= upto)
                                                 .group_by(JobRow.pipeline)):
                    self.created[pipeline] += count
                self.jobs_after = upto
            created = dict(self.created)
            for pipeline, count in s.execute(select(JobRow.pipeline, func.count())
                                             .where(JobRow.id > self.jobs_after).group_by(JobRow.pipeline)):
                created[pipeline] = created.get(pipeline, 0) + count
            rows = s.execute(select(JobRow.pipeline, JobRow.status, func.count())
                             .where(JobRow.status.in_(unfinished)).group_by(JobRow.pipeline, JobRow.status)).all()
        counts = {(pipeline, status): count for pipeline, status, count in rows}
        by_status = GaugeMetricFamily("fileproc_jobs", "Jobs in each status, by pipeline.",
                                      labels=["pipeline", "status"])
        total = CounterMetricFamily("fileproc_jobs_created", "Jobs created, by pipeline.", labels=["pipeline"])
        for pipeline in sorted(created):  # every status, zero included: a rate over it needs the series
            others = {status: counts.get((pipeline, status), 0) for status in unfinished}
            others[JobStatus.SUCCEEDED] = created[pipeline] - sum(others.values())
            for status in JobStatus:
                by_status.add_metric([pipeline, status], others[status])
            total.add_metric([pipeline], created[pipeline])
        return [by_status, total]

    def _queues(self) -> Iterable[Metric]:
        waiting = queue_depths(self.service)
        depth_family = GaugeMetricFamily("fileproc_queue_depth", "Queued steps waiting for a worker, by queue.",
                                         labels=["queue"])
        oldest_family = GaugeMetricFamily("fileproc_queue_oldest_seconds",
                                          "Age of the oldest queued job, by queue (0 when none waits).",
                                          labels=["queue"])
        for queue, (depth, oldest) in waiting.items():
            depth_family.add_metric([queue], depth)
            oldest_family.add_metric([queue], oldest)
        return [depth_family, oldest_family]

    def _drift(self) -> Iterable[Metric]:
        rows = recent_drift(self.service)
        found = GaugeMetricFamily("fileproc_reconcile_drift_objects",
                                  "Objects reconciliation found without a job (lost notifications), last 24 h.",
                                  labels=["bucket"])
        last = GaugeMetricFamily("fileproc_reconcile_last_pass_timestamp_seconds",
                                 "When reconciliation last listed the bucket (Unix time).", labels=["bucket"])
        for bucket, count, finished in rows:
            found.add_metric([bucket], count or 0)
            when = aware(finished)
            if when is not None:
                last.add_metric([bucket], when.timestamp())
        return [found, last]


def recent_drift(service: Service) -> list[tuple[str, int, datetime | None]]:
    """Each bucket reconciled in the last :data:`DRIFT_WINDOW`: objects found without a job, and its last pass."""
    with service.db.reading() as s:
        since = service.db.now(s) - DRIFT_WINDOW
        rows = s.execute(select(DriftRow.bucket, func.sum(DriftRow.new_objects + DriftRow.new_versions),
                                func.max(DriftRow.finished_at))
                         .where(DriftRow.finished_at >= since).group_by(DriftRow.bucket)
                         .order_by(DriftRow.bucket)).all()
    return [(bucket, int(count or 0), aware(finished)) for bucket, count, finished in rows]


def queue_depths(service: Service) -> dict[str, tuple[int, float]]:
    """Each queue (all of :meth:`Service.queues`, sorted): queued steps waiting, and the oldest one's age in seconds."""
    with service.db.reading() as s:
        now = service.db.now(s)
        rows = s.execute(select(JobRow.pipeline, JobRow.step_index, func.count(), func.min(JobRow.created_at))
                         .where(JobRow.status == JobStatus.QUEUED)
                         .group_by(JobRow.pipeline, JobRow.step_index)).all()
    depth: dict[str, int] = {queue: 0 for queue in service.queues()}
    oldest: dict[str, float] = {}
    for pipeline, step_index, count, first in rows:
        queue = _queue(service, pipeline, step_index)
        depth[queue] = depth.get(queue, 0) + count
        since = aware(first)
        waited = max(0.0, (now - since).total_seconds()) if since is not None else 0.0
        oldest[queue] = max(oldest.get(queue, 0.0), waited)
    return {queue: (depth[queue], oldest.get(queue, 0.0)) for queue in sorted(depth)}


def _queue(service: Service, pipeline: str, step_index: int) -> str:
    found = service.pipelines.get(pipeline)
    if found is None or step_index >= len(found.steps):
        return "?"
    try:
        return service.queue_for(found.steps[step_index])
    except FunctionNotFound:  # checked at start; kept so a scrape never fails on it
        return found.steps[step_index].queue or found.steps[step_index].function


class Metrics:
    """The ``/metrics`` page of one API process.

    Example::

        metrics = Metrics(service, counters)
        body = metrics.render()      # Prometheus text format
    """

    def __init__(self, service: Service, counters: Counters) -> None:
        self.state = StateCollector(service)
        self.counters = counters

    def render(self) -> bytes:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self.state)
        folder = multiprocess_dir()
        if folder:
            MultiProcessCollector(registry, folder)
        else:
            registry.register(_ReceiverCollector(self.counters))
        return generate_latest(registry)


__all__ = ["METRICS_CONTENT_TYPE", "Metrics", "SharedCounters", "StateCollector", "multiprocess_dir", "queue_depths",
           "recent_drift"]
