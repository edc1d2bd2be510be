"""The families read from the state database at scrape time: jobs, attempts, queues, drift.

Every API process (``--workers N``, or several hosts) answers the same
totals, and nothing is lost when a process restarts. A scrape's cost does not
grow with the history (``bench/metrics_scrape.py``):

- attempts per function and status, cold starts and warm reuses, histograms
  of step duration, peak memory and event age (the object's upload to the
  start of its step), and jobs created per pipeline: running totals in the
  state database (:mod:`fileproc.state.metrictotals`), to which a scrape adds
  the rows that settled since the last scrape of any process (a range of the
  primary key past a mark), plus, afresh, the last few seconds' rows;
- jobs per pipeline and status, queue depth and the age of the oldest waiting
  job per queue: counts over one index (status, pipeline, step, creation time)
  of the jobs not succeeded (succeeded: created minus the others);
- reconciliation drift per bucket over the last day (the drift table).

The SQL is :mod:`fileproc.state`'s; here the rows become series values
(:class:`Tally`) and the series Prometheus families.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from datetime import timedelta

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from fileproc.errors import FunctionNotFound
from fileproc.service import Service
from fileproc.state import JobStatus
from fileproc.state import metrictotals as totals
from fileproc.state.activity import waiting_steps
from fileproc.state.drift import BucketDrift, recent_by_bucket
from fileproc.state.metrictotals import UNFINISHED, AttemptSample, Key

DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)
MEMORY_BUCKETS = tuple(mb * 1024 * 1024 for mb in (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192))
AGE_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 6 * 3600, 86400)
DRIFT_WINDOW = timedelta(days=1)
SETTLE = timedelta(seconds=15)
"""Rows older than this are taken as final in id order: no transaction of fileproc's stays open this long."""

HISTOGRAMS = {
    "duration": ("fileproc_step_duration_seconds", "How long step attempts ran.", DURATION_BUCKETS),
    "memory": ("fileproc_step_peak_memory_bytes", "Peak memory of step attempts.", MEMORY_BUCKETS),
    "age": ("fileproc_event_age_seconds", "From the object's upload (its event time) to the start of a step on it.",
            AGE_BUCKETS),
}
"""Series kinds (:data:`~fileproc.state.metrictotals.Key`) ``attempts``, ``cold``, ``warm`` and
``jobs_created`` are counters; these are histograms: a histogram's buckets are kind ``duration`` (and
``memory``, ``age``) with labels (function, index of its bucket), not cumulative; ``duration_sum`` its sum."""


class Tally:
    """What some attempts add to the totals, by series (:data:`~fileproc.state.metrictotals.Key`)."""

    def __init__(self) -> None:
        self.values: dict[Key, float] = defaultdict(float)

    def attempt(self, sample: AttemptSample) -> None:
        function = sample.function
        self.values[("attempts", (function, sample.status))] += 1
        if sample.cold_start is not None:
            self.values[("cold" if sample.cold_start else "warm", (function,))] += 1
        if sample.duration_ms is not None:
            self._observe("duration", function, sample.duration_ms / 1000)
        if sample.peak_memory_kb is not None:
            self._observe("memory", function, sample.peak_memory_kb * 1024)
        if sample.event_time is not None and sample.started_at is not None:
            self._observe("age", function, max(0.0, (sample.started_at - sample.event_time).total_seconds()))

    def jobs_created(self, by_pipeline: dict[str, int]) -> None:
        for pipeline, count in by_pipeline.items():
            self.values[("jobs_created", (pipeline,))] += count

    def _observe(self, kind: str, label: str, value: float) -> None:
        bounds = HISTOGRAMS[kind][2]
        self.values[(kind, (label, str(bisect.bisect_left(bounds, value))))] += 1  # the first bound >= value
        self.values[(kind + "_sum", (label,))] += value


class StateCollector(Collector):
    """Everything the state database knows, read at scrape time, at a cost that does not grow with history.

    Attempts and jobs created are counted once into ``metric_totals``
    (:mod:`fileproc.state.metrictotals`) when they have settled (started
    :data:`SETTLE` ago: on PostgreSQL a smaller id may commit after a larger
    one, never that late), by whichever process scrapes first; a scrape adds
    the rows above the marks (the last :data:`SETTLE` seconds' and the attempts
    still running then, once they end) afresh. So a scrape reads what is new
    since the last one, a few hundred total rows, and indexed counts of the
    jobs not succeeded, whatever the history; every process answers the same
    totals, and a restart loses nothing.

    A database that has a history but no totals yet (one made before them) is
    rolled up for :attr:`BUDGET` seconds a scrape until it has caught up; in
    the meantime its counters show the part rolled up so far, rising.
    A counter this process showed never goes back (a failed attempt an admin
    retries within :data:`SETTLE` counts as retried, not also failed, in the
    totals; this process keeps its failed count).
    """

    BATCH = 2000
    """Attempts read per transaction while rolling up."""
    JOB_BATCH = 20_000
    """Job ids counted per transaction (a range of the primary key)."""
    BUDGET = 0.25
    """Seconds a scrape spends catching up a long history that has no totals yet."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.shown: dict[Key, float] = {}
        self.lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        with self.lock:  # two scrapes at once (two Prometheus servers) take turns
            caught_up = self._roll_up()
            found = totals.snapshot(self.service.db, fresh=caught_up)
            tally = Tally()
            for sample in found.fresh:
                tally.attempt(sample)
            values = defaultdict(float, found.totals)
            for key, value in tally.values.items():
                values[key] += value
            for key, value in values.items():  # a counter shown is never shown smaller, nor goes away
                values[key] = self.shown[key] = max(value, self.shown.get(key, 0.0))
            for key, value in self.shown.items():
                values.setdefault(key, value)
        yield from self._jobs(values, found.unfinished, found.fresh_jobs)
        yield from self._queues()
        yield from attempt_families(values)
        yield from self._drift()

    def _roll_up(self) -> bool:
        """Move what settled since the last scrape into the totals; False while a long history is still left."""
        deadline = time.monotonic() + self.BUDGET
        while True:
            more = self._roll_up_once()  # None: another process rolled up meanwhile (read again)
            if more is False:
                return True
            if time.monotonic() > deadline:
                return False

    def _roll_up_once(self) -> bool | None:
        db = self.service.db
        found = totals.settled(db, settle=SETTLE, batch=self.BATCH, job_batch=self.JOB_BATCH)
        if found.nothing:
            return False
        tally = Tally()
        for sample in found.ended:
            tally.attempt(sample)
        tally.jobs_created(found.jobs_created)
        if not totals.add_settled(db, found, tally.values):
            return None
        return found.more

    def _jobs(self, values: dict[Key, float], others: dict[tuple[str, str], int],
              fresh_jobs: dict[str, int]) -> Iterable[Metric]:
        # Every status but succeeded is counted through the status index; succeeded is the rest.
        created = {labels[0]: int(value) for (kind, labels), value in values.items() if kind == "jobs_created"}
        for pipeline, count in fresh_jobs.items():  # not shown (kept) apart: the totals' part is
            created[pipeline] = created.get(pipeline, 0) + count
        for pipeline, count in created.items():
            key = ("jobs_created_shown", (pipeline,))
            self.shown[key] = max(count, self.shown.get(key, 0))
            created[pipeline] = int(self.shown[key])
        by_status = GaugeMetricFamily("fileproc_jobs", "Jobs in each status, by pipeline.",
                                      labels=["pipeline", "status"])
        total = CounterMetricFamily("fileproc_jobs_created", "Jobs created, by pipeline.", labels=["pipeline"])
        for pipeline in sorted(created):  # every status, zero included: a rate over it needs the series
            counts = {status: others.get((pipeline, status), 0) for status in UNFINISHED}
            counts[JobStatus.SUCCEEDED] = max(0, created[pipeline] - sum(counts.values()))
            for status in JobStatus:
                by_status.add_metric([pipeline, status], counts[status])
            total.add_metric([pipeline], created[pipeline])
        return [by_status, total]

    def _queues(self) -> Iterable[Metric]:
        waiting = queue_depths(self.service)
        depth_family = GaugeMetricFamily("fileproc_queue_depth", "Queued steps waiting for a worker, by queue "
                                         "(user-functions: the deployed functions' queues together).",
                                         labels=["queue"])
        oldest_family = GaugeMetricFamily("fileproc_queue_oldest_seconds",
                                          "Age of the oldest queued job, by queue (0 when none waits).",
                                          labels=["queue"])
        for queue, (depth, oldest) in waiting.items():
            depth_family.add_metric([queue], depth)
            oldest_family.add_metric([queue], oldest)
        return [depth_family, oldest_family]

    def _drift(self) -> Iterable[Metric]:
        found = GaugeMetricFamily("fileproc_reconcile_drift_objects",
                                  "Objects reconciliation found without a job (lost notifications), last 24 h.",
                                  labels=["bucket"])
        last = GaugeMetricFamily("fileproc_reconcile_last_pass_timestamp_seconds",
                                 "When reconciliation last listed the bucket (Unix time).", labels=["bucket"])
        for bucket, count, finished in recent_drift(self.service):
            found.add_metric([bucket], count or 0)
            if finished is not None:
                last.add_metric([bucket], finished.timestamp())
        return [found, last]


def attempt_families(values: dict[Key, float]) -> Iterator[Metric]:
    """The attempts' counters and histograms from their series values."""
    attempts = CounterMetricFamily("fileproc_attempts", "Step attempts that ended, by function and status.",
                                   labels=["function", "status"])
    cold = CounterMetricFamily("fileproc_cold_starts", "Attempts that started a new runner process.",
                               labels=["function"])
    warm = CounterMetricFamily("fileproc_warm_starts", "Attempts that reused a warm runner process.",
                               labels=["function"])
    families = {"attempts": attempts, "cold": cold, "warm": warm}
    for (kind, labels), value in sorted(values.items()):
        if kind in families:
            families[kind].add_metric(list(labels), value)
    yield from families.values()
    for kind, (name, help_text, bounds) in HISTOGRAMS.items():
        counts: dict[str, list[float]] = {}
        for (found, labels), value in values.items():
            if found == kind and len(labels) == 2 and labels[1].isdigit() and int(labels[1]) <= len(bounds):
                counts.setdefault(labels[0], [0.0] * (len(bounds) + 1))[int(labels[1])] += value
        family = HistogramMetricFamily(name, help_text, labels=["function"])
        for function, by_bucket in sorted(counts.items()):
            running, buckets = 0.0, []
            for bound, count in zip([*map(str, bounds), "+Inf"], by_bucket, strict=True):
                running += count
                buckets.append((bound, running))
            family.add_metric([function], buckets, values.get((kind + "_sum", (function,)), 0.0))
        yield family


def recent_drift(service: Service) -> list[BucketDrift]:
    """Each bucket reconciled in the last :data:`DRIFT_WINDOW`: objects found without a job, and its last pass."""
    return recent_by_bucket(service.db, DRIFT_WINDOW)


def queue_depths(service: Service) -> dict[str, tuple[int, float]]:
    """Each queue, sorted: queued steps waiting, and the oldest one's age in seconds.

    The queues are those of :meth:`Service.queues` and each deployed
    function's own (``fn.NAME``), zero included. A name that stands for a
    group of queues in a worker's queue list (``user-functions``: every
    deployed function's) counts what its queues hold together: what a worker
    given that name has waiting (a queue-depth autoscaler reads it so).
    """
    lanes = service.functions.lanes()
    depth: dict[str, int] = {queue: 0 for queue in service.queues()}
    depth.update((queue, 0) for queues in lanes.values() for queue in queues)
    oldest: dict[str, float] = {}
    for waiting in waiting_steps(service.db):
        queue = _queue(service, waiting.pipeline, waiting.step_index)
        depth[queue] = depth.get(queue, 0) + waiting.count
        oldest[queue] = max(oldest.get(queue, 0.0), waiting.oldest_seconds)
    for group, queues in lanes.items():
        depth[group] += sum(depth[queue] for queue in queues)
        oldest[group] = max([oldest.get(group, 0.0), *(oldest.get(queue, 0.0) for queue in queues)])
    return {queue: (depth[queue], oldest.get(queue, 0.0)) for queue in sorted(depth)}


def _queue(service: Service, pipeline: str, step_index: int) -> str:
    found = service.pipeline(pipeline)
    if found is None or step_index >= len(found.steps):
        return "?"
    try:
        return service.queue_for(found.steps[step_index])
    except FunctionNotFound:  # checked at start; kept so a scrape never fails on it
        return found.steps[step_index].queue or found.steps[step_index].function


__all__ = ["DRIFT_WINDOW", "HISTOGRAMS", "SETTLE", "StateCollector", "Tally", "attempt_families", "queue_depths",
           "recent_drift"]
