"""Prometheus metrics (``GET /metrics``): what the state database knows, plus the receiver's counters.

Jobs, queues, attempts and drift are read from the state database when
Prometheus scrapes, so every API process (``--workers N``, or several hosts)
answers the same totals, and nothing is lost when a process restarts. A
scrape's cost does not grow with the history (``bench/metrics_scrape.py``):

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

The receiver's counters (notifications received, recorded, unmatched,
rejected ...) live in each API process. With one process they are read from
its :class:`~fileproc.intake.webhook.Counters`; ``fileproc api --workers N``
turns on prometheus-client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``,
a folder of its own per start) and every scrape sums all processes' counts.
"""

from __future__ import annotations

import bisect
import collections
import os
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from fileproc.errors import FunctionNotFound
from fileproc.intake.webhook import Counters
from fileproc.service import Service
from fileproc.state.metrictotals import SEP, MetricMarkRow, MetricTotalRow
from fileproc.state.models import AttemptRow, AttemptStatus, DriftRow, JobRow, JobStatus, utcnow
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


class _ReceiverCollector(Collector):
    """This process's receiver counters (one API process)."""

    def __init__(self, counters: Counters) -> None:
        self.counters = counters

    def collect(self) -> Iterator[Metric]:
        values = self.counters.to_dict()
        for name, (metric, help_text) in RECEIVER.items():
            yield CounterMetricFamily(metric.removesuffix("_total"), help_text, value=values.get(name, 0))


Key = tuple[str, tuple[str, ...]]
"""A series value: its kind (``attempts``, ``cold``, ``duration``, ``duration_sum``, ``jobs_created`` ...) and labels.

A histogram's buckets are kind ``duration`` (and ``memory``, ``age``) with
labels (function, index of its bucket), not cumulative; ``duration_sum`` its sum.
"""

HISTOGRAMS = {
    "duration": ("fileproc_step_duration_seconds", "How long step attempts ran.", DURATION_BUCKETS),
    "memory": ("fileproc_step_peak_memory_bytes", "Peak memory of step attempts.", MEMORY_BUCKETS),
    "age": ("fileproc_event_age_seconds", "From the object's upload (its event time) to the start of a step on it.",
            AGE_BUCKETS),
}


class _Tally:
    """What some attempts and jobs add to the totals, by :data:`Key`."""

    def __init__(self) -> None:
        self.values: dict[Key, float] = defaultdict(float)

    def attempt(self, row: Any) -> None:
        function = row.function
        self.values[("attempts", (function, row.status))] += 1
        if row.cold_start is not None:
            self.values[("cold" if row.cold_start else "warm", (function,))] += 1
        if row.duration_ms is not None:
            self._observe("duration", function, row.duration_ms / 1000)
        if row.peak_memory_kb is not None:
            self._observe("memory", function, row.peak_memory_kb * 1024)
        uploaded = _event_time(row.event_time)
        started = aware(row.started_at)
        if uploaded is not None and started is not None:
            self._observe("age", function, max(0.0, (started - uploaded).total_seconds()))

    def _observe(self, kind: str, label: str, value: float) -> None:
        bounds = HISTOGRAMS[kind][2]
        self.values[(kind, (label, str(bisect.bisect_left(bounds, value))))] += 1  # the first bound >= value
        self.values[(kind + "_sum", (label,))] += value


def _attempt_rows() -> Any:
    # Only the event's time, extracted by the database: decoding whole events was most of the cost.
    return (select(AttemptRow.id, AttemptRow.function, AttemptRow.status, AttemptRow.duration_ms,
                   AttemptRow.peak_memory_kb, AttemptRow.cold_start, AttemptRow.started_at,
                   JobRow.event["time"].as_string().label("event_time"))
            .join(JobRow, JobRow.id == AttemptRow.job_id))


def _event_time(value: str | None) -> datetime | None:
    try:
        return aware(datetime.fromisoformat(value)) if value else None
    except ValueError:
        return None


def _marks(s: Session) -> dict[str, tuple[int, list[int]]]:
    return _marks_of({m.name: m for m in s.scalars(select(MetricMarkRow))})


def _marks_of(rows: dict[str, MetricMarkRow]) -> dict[str, tuple[int, list[int]]]:
    """Each mark's id and pending ids (none yet: 0, [])."""
    return {name: ((rows[name].after or 0, sorted(rows[name].pending or [])) if name in rows else (0, []))
            for name in ("attempts", "jobs")}


def _pipelines(s: Session, after: int, upto: int | None) -> dict[str, int]:
    """Jobs per pipeline with ids in (after, upto]; counted here: grouped in SQL, SQLite scans the unique
    index (which starts with the pipeline) instead of taking the range of the primary key."""
    query = select(JobRow.pipeline).where(JobRow.id > after)
    return dict(collections.Counter(s.scalars(query if upto is None else query.where(JobRow.id <= upto))))


def _attempt_families(values: dict[Key, float]) -> Iterator[Metric]:
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
            values, others, fresh_jobs = self._read(caught_up)
            for key, value in values.items():  # a counter shown is never shown smaller, nor goes away
                values[key] = self.shown[key] = max(value, self.shown.get(key, 0.0))
            for key, value in self.shown.items():
                values.setdefault(key, value)
        yield from self._jobs(values, others, fresh_jobs)
        yield from self._queues()
        yield from _attempt_families(values)
        yield from self._drift()

    # -- the totals ---------------------------------------------------------

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
        tally = _Tally()
        with db.reading() as s:
            marks = _marks(s)
            settled = db.now(s) - SETTLE
            after, pending = marks["attempts"]
            still: list[int] = []
            if pending:  # a few: the attempts that were running when the mark passed them
                ended = {row.id: row for row in s.execute(_attempt_rows().where(AttemptRow.id.in_(pending)))}
                for attempt_id in pending:
                    row = ended.get(attempt_id)
                    if row is not None and row.status == AttemptStatus.RUNNING:
                        still.append(attempt_id)
                    elif row is not None:
                        tally.attempt(row)
            rows = s.execute(_attempt_rows().where(AttemptRow.id > after).order_by(AttemptRow.id)
                             .limit(self.BATCH)).all()
            new_after = after
            for row in rows:
                started = aware(row.started_at)
                if started is None or started >= settled:
                    break
                if row.status == AttemptStatus.RUNNING:
                    still.append(row.id)
                else:
                    tally.attempt(row)
                new_after = row.id
            more = len(rows) == self.BATCH and new_after == rows[-1].id
            jobs_after = marks["jobs"][0]
            upto = s.scalar(select(func.max(JobRow.id)).where(JobRow.id > jobs_after,
                                                               JobRow.id <= jobs_after + self.JOB_BATCH,
                                                               JobRow.created_at < settled))
            if upto is not None:
                for pipeline, count in _pipelines(s, jobs_after, upto).items():
                    tally.values[("jobs_created", (pipeline,))] += count
                more = more or upto == jobs_after + self.JOB_BATCH
            else:  # none in the range: past a gap of unused ids (PostgreSQL's ON CONFLICT takes one per duplicate)?
                following = s.execute(select(JobRow.id, JobRow.created_at).where(JobRow.id > jobs_after)
                                      .order_by(JobRow.id).limit(1)).first()
                if (following is not None and following.id > jobs_after + self.JOB_BATCH
                        and (aware(following.created_at) or settled) < settled):
                    upto, more = following.id - 1, True  # nothing to count up to it
        if new_after == after and still == pending and upto is None:
            return False
        try:
            with db.session() as s:
                rows_now = {m.name: m for m in s.scalars(select(MetricMarkRow).with_for_update())}
                if _marks_of(rows_now) != marks:
                    return None
                for name in ("attempts", "jobs"):
                    if name not in rows_now:
                        rows_now[name] = MetricMarkRow(name=name, after=0, pending=[])
                        s.add(rows_now[name])
                kinds = {kind for kind, _ in tally.values}
                totals = {(r.kind, r.labels): r for r in s.scalars(select(MetricTotalRow)
                                                                   .where(MetricTotalRow.kind.in_(kinds)))}
                for (kind, labels), value in tally.values.items():
                    joined = SEP.join(labels)
                    total = totals.get((kind, joined))
                    if total is None:
                        s.add(MetricTotalRow(kind=kind, labels=joined, value=value))
                    else:
                        total.value += value
                now = utcnow()
                rows_now["attempts"].after, rows_now["attempts"].pending = new_after, sorted(still)
                rows_now["attempts"].updated_at = now
                if upto is not None:
                    rows_now["jobs"].after, rows_now["jobs"].updated_at = upto, now
        except IntegrityError:  # two processes made the first marks at once: one did
            return None
        return more

    def _read(self, caught_up: bool) -> tuple[dict[Key, float], dict[tuple[str, str], int], dict[str, int]]:
        """The totals plus what is above the marks; jobs per pipeline and status but succeeded; jobs not in the totals.

        While a long history is still being rolled up (``caught_up`` False),
        only the totals: what is above the marks is most of the history then.
        """
        unfinished = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.FAILED, JobStatus.SKIPPED)
        values: dict[Key, float] = defaultdict(float)
        fresh_jobs: dict[str, int] = {}
        with self.service.db.reading() as s:
            marks = _marks(s)
            for total in s.scalars(select(MetricTotalRow)):
                values[(total.kind, tuple(total.labels.split(SEP)))] += total.value
            if caught_up:
                tally = _Tally()
                after, pending = marks["attempts"]
                for row in s.execute(_attempt_rows().where(or_(AttemptRow.id > after, AttemptRow.id.in_(pending)),
                                                           AttemptRow.status != AttemptStatus.RUNNING)):
                    tally.attempt(row)
                for key, value in tally.values.items():
                    values[key] += value
                fresh_jobs = _pipelines(s, marks["jobs"][0], None)
            others = {(pipeline, status): count for pipeline, status, count in s.execute(
                select(JobRow.pipeline, JobRow.status, func.count())
                .where(JobRow.status.in_(unfinished)).group_by(JobRow.pipeline, JobRow.status))}
        return values, others, fresh_jobs

    # -- the families ---------------------------------------------------------

    def _jobs(self, values: dict[Key, float], others: dict[tuple[str, str], int],
              fresh_jobs: dict[str, int]) -> Iterable[Metric]:
        # Every status but succeeded is counted through the status index; succeeded is the rest.
        unfinished = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.FAILED, JobStatus.SKIPPED)
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
            counts = {status: others.get((pipeline, status), 0) for status in unfinished}
            counts[JobStatus.SUCCEEDED] = max(0, created[pipeline] - sum(counts.values()))
            for status in JobStatus:
                by_status.add_metric([pipeline, status], counts[status])
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
