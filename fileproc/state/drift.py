"""The reconciler's side of the state database: which versions have jobs, and what drift was found.

Plain functions over :class:`~fileproc.state.Database` sessions, kept out of
the ``Database`` class so the reconciler's queries live beside their one user.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import and_, delete, func, or_, select

from fileproc.state import Database
from fileproc.state.models import DriftRow, JobRow
from fileproc.state.records import aware

KEEP_CLEAN_PASSES = timedelta(days=1)
"""Passes that found nothing and failed nothing are kept this long..."""

KEEP_PASSES = timedelta(days=30)
"""...and those that found drift or failed, this long."""


@dataclass
class Drift:
    """One pass over one bucket. Counts are objects, not jobs.

    ``listed``: objects under the watched prefixes; ``matched``: those some
    pipeline takes; ``covered``: matched objects every pipeline already has a
    job for (this version, whatever the job's status); ``new_objects`` /
    ``new_versions``: objects that got a job now, having had none at all / one
    only for an older version (the drift: their notification was lost);
    ``own_outputs``: objects a pipeline wrote itself (never fed back to it);
    ``recent``: objects changed too recently to judge (their notification may
    be on its way, or a file may still be written), left for the next pass.
    """

    bucket: str
    prefixes: list[str] = field(default_factory=list)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    listed: int = 0
    matched: int = 0
    covered: int = 0
    new_objects: int = 0
    new_versions: int = 0
    own_outputs: int = 0
    recent: int = 0
    sample: list[str] = field(default_factory=list)
    cpu_ms: int = 0
    duration_ms: int = 0
    error: str | None = None

    @property
    def submitted(self) -> int:
        """Objects that had no job for their current version (the drift)."""
        return self.new_objects + self.new_versions

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["submitted"] = self.submitted
        for name in ("started_at", "finished_at"):
            data[name] = data[name].isoformat() if data[name] else None
        return data


def versions_with_jobs(db: Database, bucket: str, keys: Iterable[str]) -> dict[tuple[str, str], set[str]]:
    """For each (pipeline, key) of ``bucket`` among ``keys``: the versions and etags its jobs cover.

    A job's version is the object's version id when its notification carried
    one, else its etag; a listing gives only the etag, so both are returned.
    """
    wanted = sorted(set(keys))
    found: dict[tuple[str, str], set[str]] = {}
    if not wanted:
        return found
    with db.reading() as s:
        rows = s.execute(select(JobRow.pipeline, JobRow.key, JobRow.version, JobRow.etag)
                         .where(JobRow.bucket == bucket, JobRow.key.in_(wanted)))
        for pipeline, key, version, job_etag in rows:
            covered = found.setdefault((pipeline, key), set())
            covered.add(version)
            if job_etag:
                covered.add(job_etag)
    return found


def record(db: Database, drift: Drift) -> None:
    """Store one pass's drift; forget the bucket's passes older than :data:`KEEP_CLEAN_PASSES` / :data:`KEEP_PASSES`."""
    with db.session() as s:
        now = db.now(s)
        values = asdict(drift)
        values["started_at"] = drift.started_at or now
        values["finished_at"] = drift.finished_at or now
        s.add(DriftRow(**values))
        clean = and_(DriftRow.new_objects == 0, DriftRow.new_versions == 0, DriftRow.error.is_(None))
        s.execute(delete(DriftRow).where(
            DriftRow.bucket == drift.bucket,
            or_(DriftRow.finished_at < now - KEEP_PASSES, and_(clean, DriftRow.finished_at < now - KEEP_CLEAN_PASSES)),
        ).execution_options(synchronize_session=False))


def history(db: Database, limit: int = 50, *, drift_only: bool = False) -> list[Drift]:
    """The latest recorded passes, newest first (with ``drift_only``: those that found drift or failed)."""
    query = select(DriftRow)
    if drift_only:
        query = query.where((DriftRow.new_objects + DriftRow.new_versions > 0) | DriftRow.error.is_not(None))
    with db.reading() as s:
        rows = s.scalars(query.order_by(DriftRow.id.desc()).limit(limit))
        return [_drift_of(row) for row in rows]


class BucketDrift(NamedTuple):
    """One bucket's reconciliation over a window: objects found without a job, and when it was last listed."""

    bucket: str
    objects: int
    last_pass: datetime | None


def recent_by_bucket(db: Database, window: timedelta) -> list[BucketDrift]:
    """Each bucket reconciled in the last ``window`` (on the database's clock), by name."""
    with db.reading() as s:
        since = db.now(s) - window
        rows = s.execute(select(DriftRow.bucket, func.sum(DriftRow.new_objects + DriftRow.new_versions),
                                func.max(DriftRow.finished_at))
                         .where(DriftRow.finished_at >= since).group_by(DriftRow.bucket)
                         .order_by(DriftRow.bucket)).all()
    return [BucketDrift(bucket, int(count or 0), aware(finished)) for bucket, count, finished in rows]


def found_without_job(db: Database, bucket: str, key: str, *, passes: int = 1000) -> list[datetime | None]:
    """When passes over ``bucket`` (the latest ``passes``) found ``key`` without a job, newest first.

    Each pass keeps a sample of what it found, so a key beyond the sample is not seen.
    """
    with db.reading() as s:
        rows = s.execute(select(DriftRow.sample, DriftRow.finished_at).where(DriftRow.bucket == bucket)
                         .order_by(DriftRow.id.desc()).limit(passes)).all()
    return [aware(finished) for sample, finished in rows if key in (sample or [])]


def _drift_of(row: DriftRow) -> Drift:
    drift = Drift(**{name: getattr(row, name) for name in Drift.__dataclass_fields__})
    drift.started_at, drift.finished_at = aware(row.started_at), aware(row.finished_at)
    return drift


__all__ = ["BucketDrift", "Drift", "found_without_job", "history", "recent_by_bucket", "record", "versions_with_jobs"]
