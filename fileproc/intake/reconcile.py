"""Reconciliation: list every watched bucket and process what no job covers.

Notifications get lost: some stores never retry a webhook (versitygw), drop
or garble events under load, and nothing listens while fileproc is down. So
listing, not the notification, is the final word on what exists. The
reconciler lists each bucket a pipeline watches (only the prefixes pipelines
watch), at start and then on an interval, and submits every matching object
that has **no job for its current version** (version id or etag): a new
object, or a new version of a known one. What it found is recorded as drift
(:mod:`fileproc.state.drift`) and logged, so a person can see that
notifications were lost and how many.

What it does not do, on purpose:

- retry failed jobs: they failed for a reason (``fileproc retry`` is the
  admin's call); a job of any status covers its version;
- recover queued or running jobs: the outbox (:mod:`fileproc.runtime.outbox`) re-sends
  a queued job whose message was lost and a running job whose lease ran out;
- feed a pipeline's own outputs back to it: their provenance metadata (from
  a HEAD: a listing carries none) and the jobs' output records tell;
- judge objects changed in the last few seconds (:data:`RECENT_SECONDS`):
  their notification may be on its way, or a dropped file may still be
  written; the next pass takes them.

How often: a bucket is listed again after ``max(min_interval, cpu /
budget)`` seconds, at most ``interval``, where ``cpu`` is the CPU time its
last pass took and ``budget`` is ``reconcile.cpu_budget`` shared among the
watched buckets (:func:`next_interval`). A small bucket is listed about once
a minute; a big one less often, so listing stays within its share of a core.
Memory stays bounded: the listing streams, and is compared in batches.

Sooner when asked: a worker that skips a job as superseded leaves a nudge
for its bucket (:mod:`fileproc.state.nudges`: the store may have named the
wrong key, so another object's notification is lost). The reconciler looks
for nudges every second and lists a nudged bucket at once, or, if a nudge
already made it list that bucket less than ``min_interval`` ago, then; if
that pass left objects too recent to judge, once more when they no longer are.

Example::

    from fileproc.intake.reconcile import reconcile_all
    for drift in reconcile_all(service):
        print(drift.bucket, drift.submitted, "objects had no job")
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from fileproc.config import ReconcileSettings, Settings
from fileproc.errors import FileprocError, ObjectNotFound, StorageError
from fileproc.events import ObjectEvent
from fileproc.objects import event_for
from fileproc.rules import PROVENANCE_PIPELINE, Pipeline, event_matches, match
from fileproc.service import Service
from fileproc.state import drift as drift_db
from fileproc.state.drift import Drift
from fileproc.state.nudges import take_nudges
from fileproc.storage import ObjectInfo, Storage

log = logging.getLogger(__name__)

BATCH = 500
"""Objects compared with the jobs and outputs (a query each) and submitted (one transaction) at a time."""

SAMPLE = 20
"""Keys of submitted objects kept with each pass's drift."""

RECENT_SECONDS = 5.0
"""Objects changed less than this long ago are left for the next pass."""

LISTED_EVENT = "s3:ObjectCreated:Put"
"""The event a listed object stands for (a listing cannot tell how it was written)."""

_BUCKET_GLOB = "*?["  # fnmatch, as rules match bucket names
_KEY_GLOB = "*?"  # rules' own key globs (no character classes)


@dataclass(frozen=True)
class Scope:
    """One bucket to list, and the prefixes under it that pipelines watch (no one inside another)."""

    bucket: str
    prefixes: tuple[str, ...]


# --- what to list ---------------------------------------------------------------------------


def watched_prefix(pipeline: Pipeline) -> str | None:
    """The longest prefix every key ``pipeline`` takes starts with; None if it takes no listed object."""
    m = pipeline.match
    if not any(event_matches(pattern, LISTED_EVENT) for pattern in m.events):
        return None
    prefix = m.prefix
    if m.glob:
        cut = min((i for i, char in enumerate(m.glob) if char in _KEY_GLOB), default=len(m.glob))
        literal = m.glob[:cut]
        if literal.startswith(prefix):
            prefix = literal
        elif not prefix.startswith(literal):
            return None  # the prefix and the glob exclude each other
    return prefix


def watched_scopes(service: Service) -> list[Scope]:
    """The buckets pipelines watch, each with its prefixes, in bucket order."""
    prefixes: dict[str, set[str]] = {}
    patterns: list[tuple[str, str]] = []
    for pipeline in service.pipelines.values():
        prefix = watched_prefix(pipeline)
        if prefix is None:
            continue
        if set(_BUCKET_GLOB) & set(pipeline.match.bucket):
            patterns.append((pipeline.match.bucket, prefix))
        else:
            prefixes.setdefault(pipeline.match.bucket, set()).add(prefix)
    if patterns:
        from fnmatch import fnmatchcase

        for name in service.storage.list_buckets():
            for pattern, prefix in patterns:
                if fnmatchcase(name, pattern):
                    prefixes.setdefault(name, set()).add(prefix)
    return [Scope(bucket, _outermost(found)) for bucket, found in sorted(prefixes.items())]


def _outermost(prefixes: Iterable[str]) -> tuple[str, ...]:
    kept: list[str] = []
    for prefix in sorted(prefixes):
        if not any(prefix.startswith(outer) for outer in kept):
            kept.append(prefix)
    return tuple(kept)


# --- one pass -------------------------------------------------------------------------------


def recent_seconds(settings: Settings) -> float:
    """How recent a change is left for the next pass; a dropped file must also have settled."""
    if settings.storage.backend == "local":
        return max(RECENT_SECONDS, 2 * settings.watcher.settle_seconds)
    return RECENT_SECONDS


def reconcile_bucket(service: Service, scope: Scope, *, recent: float | None = None, save: bool = True) -> Drift:
    """List ``scope`` once, submit what no job covers, record and log the drift.

    A storage error ends the pass early: what was done stays done, and the
    drift carries the error. ``recent``: see :data:`RECENT_SECONDS` (0 judges
    everything). ``save``: record the drift in the state database.
    """
    recent = recent_seconds(service.settings) if recent is None else recent
    drift = Drift(scope.bucket, list(scope.prefixes), started_at=datetime.now(UTC))
    cpu, wall = time.thread_time(), time.monotonic()
    try:
        for prefix in scope.prefixes:
            for batch in _batches(service.storage.list(scope.bucket, prefix)):
                _reconcile_batch(service, batch, drift, recent)
    except StorageError as exc:
        drift.error = str(exc)
    drift.finished_at = datetime.now(UTC)
    drift.cpu_ms = round((time.thread_time() - cpu) * 1000)
    drift.duration_ms = round((time.monotonic() - wall) * 1000)
    if drift.error:
        log.warning("reconcile: %s: listing failed after %d objects: %s", scope.bucket, drift.listed, drift.error)
    if drift.submitted:
        log.warning("reconcile: %s: %d object%s had no job (notifications lost?): %s%s", scope.bucket,
                    drift.submitted, "" if drift.submitted == 1 else "s", ", ".join(drift.sample[:5]),
                    " ..." if drift.submitted > 5 else "")
    else:
        log.debug("reconcile: %s: %d listed, %d covered", scope.bucket, drift.listed, drift.covered)
    if save:
        drift_db.record(service.db, drift)
    return drift


def reconcile_all(service: Service, *, recent: float | None = None, save: bool = True) -> list[Drift]:
    """One pass over every watched bucket (``fileproc reconcile --once``)."""
    return [reconcile_bucket(service, scope, recent=recent, save=save) for scope in watched_scopes(service)]


def _batches(items: Iterable[ObjectInfo]) -> Iterator[list[ObjectInfo]]:
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, BATCH)):
        yield batch


def _headed(storage: Storage, events: list[ObjectEvent]) -> list[ObjectEvent]:
    """The events of objects about to be submitted, as a HEAD describes them; objects gone are dropped.

    A listing has no version id, content type or metadata. Without the version
    id, a job made here on a versioned bucket would not be the one the
    object's late notification finds (the job key is the version id when
    there is one); without the rest, a content type rule or an output's
    provenance would decide on a guess. Only drift is HEADed, so a pass over
    a bucket whose objects all have jobs costs no HEAD.
    """
    out = []
    for event in events:
        try:
            info = storage.head(event.bucket, event.key)
        except ObjectNotFound:
            continue  # deleted since it was listed
        out.append(event_for(event.bucket, event.key, info, event_name=LISTED_EVENT, source="reconcile"))
    return out


def _reconcile_batch(service: Service, batch: list[ObjectInfo], drift: Drift, recent: float) -> None:
    """Compare one batch of the listing with the jobs (two queries) and submit what no job covers."""
    pipelines = list(service.pipelines.values())
    now = datetime.now(UTC)
    drift.listed += len(batch)
    candidates: list[tuple[ObjectEvent, list[Pipeline]]] = []
    for info in batch:
        event = event_for(info.bucket, info.key, info, event_name=LISTED_EVENT, source="reconcile", listed=True)
        found = match(pipelines, event)
        if not found:
            continue
        drift.matched += 1
        if info.last_modified is not None and abs((now - info.last_modified).total_seconds()) < recent:
            drift.recent += 1
        else:
            candidates.append((event, found))
    covered = drift_db.versions_with_jobs(service.db, drift.bucket, (e.key for e, _ in candidates))

    def without_job(event: ObjectEvent, found: list[Pipeline]) -> list[Pipeline]:
        return [p for p in found if not {event.version, event.etag or ""} & covered.get((p.name, event.key), set())]

    missing = [(e, lacking) for e, found in candidates if (lacking := without_job(e, found))]
    drift.covered += len(candidates) - len(missing)
    if not missing:
        return
    # Outputs a pipeline wrote into a bucket it watches have no job of their own, on every pass:
    # known from the output records (one query), they cost no HEAD.
    written = service.db.outputs_among((e.bucket, e.key, e.etag or "") for e, _ in missing)
    wanted = [e for e, lacking in missing
              if {p.name for p in lacking} - written.get((e.bucket, e.key, e.etag or ""), set())]
    drift.own_outputs += len(missing) - len(wanted)
    events = _headed(service.storage, wanted)
    drift.matched -= len(wanted) - len(events)  # deleted since listed
    still = []
    for event in events:
        if match(pipelines, event):
            still.append(event)
        elif event.metadata.get(PROVENANCE_PIPELINE):
            drift.own_outputs += 1  # its provenance names the only pipeline that took it
        else:
            drift.matched -= 1  # a content type rule refuses it, now that the type is known
    # A new version: a pipeline that lacks a job for this version had one for an older version.
    older = {e.key for e, lacking in missing if any((p.name, e.key) in covered for p in lacking)}
    created = {item.job.key for item in service.submit(still) if item.created}
    for event in still:
        if event.key not in created:
            drift.covered += 1  # a notification made the job meanwhile (or an output record says no)
            continue
        if event.key in older:
            drift.new_versions += 1
        else:
            drift.new_objects += 1
        if len(drift.sample) < SAMPLE:
            drift.sample.append(event.key)


# --- on an interval ---------------------------------------------------------------------------


def next_interval(cpu_seconds: float, settings: ReconcileSettings, buckets: int = 1) -> float:
    """Seconds until a bucket whose last pass took ``cpu_seconds`` of CPU is listed again.

    Each of ``buckets`` watched buckets gets an equal share of the CPU budget,
    so all of them together stay within it.

    >>> next_interval(0.01, ReconcileSettings())   # small: the shortest interval
    60.0
    >>> next_interval(3.0, ReconcileSettings())    # 3 s of CPU at 3 %: every 100 s
    100.0
    >>> next_interval(60.0, ReconcileSettings())   # huge: never less often than `interval`
    300.0
    """
    share = settings.cpu_budget / max(1, buckets)
    return min(settings.interval, max(settings.min_interval, cpu_seconds / share))


NUDGE_POLL_SECONDS = 1.0
"""How often the reconciler looks for nudges (a read of one small table)."""


class Reconciler:
    """Lists every watched bucket at start, then each on its own adaptive interval, in a daemon thread.

    A nudged bucket (:mod:`fileproc.state.nudges`) is listed sooner: at
    most once per ``min_interval`` for nudges (and once more if that pass
    left objects too recent to judge). ``on_pass(drift)`` is called after
    each bucket's pass (the CLI prints it).
    """

    def __init__(self, service: Service, on_pass: Callable[[Drift], None] | None = None) -> None:
        self.service = service
        self.on_pass = on_pass
        self._stop = threading.Event()
        self._due: dict[str, float] = {}
        self._nudged: dict[str, float] = {}  # bucket -> when a nudge for it was taken (monotonic), until served
        self._nudged_pass: dict[str, float] = {}  # bucket -> when its last pass for a nudge started (monotonic)
        self._thread = threading.Thread(target=self.run, name="fileproc-reconciler", daemon=True)

    def start(self) -> Reconciler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        """Reconcile until :meth:`stop` (in the calling thread)."""
        settings = self.service.settings.reconcile
        while not self._stop.is_set():
            try:
                self.run_due()
            except FileprocError as exc:  # the store cannot list its buckets, usually
                log.warning("reconcile: %s; trying again in %.0f s", exc, settings.min_interval)
                self._stop.wait(settings.min_interval)
                continue
            except Exception:  # the reconciler must outlive any one failure (logged)
                log.exception("reconcile: a pass failed; trying again in %.0f s", settings.min_interval)
                self._stop.wait(settings.min_interval)
                continue
            now = time.monotonic()
            # Wake for the next bucket due, at least every min_interval for new buckets a glob matches,
            # and every second for nudges.
            wait = min([settings.min_interval, NUDGE_POLL_SECONDS, *(due - now for due in self._due.values())])
            self._stop.wait(max(wait, 0.05))

    def run_due(self) -> list[Drift]:
        """Reconcile every bucket that is due now (every bucket, the first time; a nudged one, soon)."""
        settings = self.service.settings.reconcile
        scopes = watched_scopes(self.service)
        now = time.monotonic()
        self._due = {scope.bucket: self._due.get(scope.bucket, now) for scope in scopes}
        self._take_nudges(now)
        done = []
        for scope in scopes:
            if self._stop.is_set() or self._due[scope.bucket] > time.monotonic():
                continue
            started = time.monotonic()
            if scope.bucket in self._nudged:
                self._nudged_pass[scope.bucket] = started
            try:
                drift = reconcile_bucket(self.service, scope)
            except FileprocError as exc:  # the state database, usually: try again soon
                log.warning("reconcile: %s: %s", scope.bucket, exc)
                self._due[scope.bucket] = time.monotonic() + settings.min_interval
                continue
            self._due[scope.bucket] = time.monotonic() + next_interval(drift.cpu_ms / 1000, settings, len(scopes))
            self._served(scope.bucket, started, drift)
            done.append(drift)
            if self.on_pass:
                self.on_pass(drift)
        return done

    def _take_nudges(self, now: float) -> None:
        """Bring forward the buckets workers asked for, as far as ``min_interval`` allows."""
        try:
            asked = take_nudges(self.service.db)
        except FileprocError as exc:  # the state database: the intervals still hold
            log.debug("reconcile: cannot read nudges: %s", exc)
            return
        for bucket in asked:
            if bucket not in self._due:
                continue  # no pipeline watches it (any more)
            # At most one listing per min_interval for nudges (besides the interval's own).
            at = max(now, self._nudged_pass.get(bucket, -math.inf) + self.service.settings.reconcile.min_interval)
            log.info("reconcile: %s: listing in %.0f s, as a worker asked (a job was superseded)", bucket, at - now)
            self._nudged[bucket] = now  # (the latest: what it is about may be newer than an earlier one's)
            self._due[bucket] = min(self._due[bucket], at)

    def _served(self, bucket: str, started: float, drift: Drift) -> None:
        """After a pass of a nudged bucket: done, unless it left objects too recent to judge that the nudge is about."""
        nudged = self._nudged.get(bucket)
        if nudged is None:
            return
        settle = recent_seconds(self.service.settings)
        if drift.recent and not drift.error and started < nudged + settle:  # once more, when they can be judged
            self._due[bucket] = min(self._due[bucket], nudged + settle)
        else:
            del self._nudged[bucket]


__all__ = [
    "BATCH", "NUDGE_POLL_SECONDS", "RECENT_SECONDS", "Reconciler", "Scope", "next_interval", "recent_seconds",
    "reconcile_all", "reconcile_bucket", "watched_prefix", "watched_scopes",
]
