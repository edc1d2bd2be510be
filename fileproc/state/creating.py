"""Creating jobs, written for throughput: the receiver records thousands a second through it.

:func:`create_jobs` (behind :meth:`fileproc.state.Database.create_jobs`) makes
the jobs of many events in one transaction; a duplicate finds the existing
job. Measured with the receiver under load, what keeps it cheap:

- the statement text is the same whatever the batch size, so neither
  SQLAlchemy nor the driver parses a new statement with thousands of
  parameters per batch (that parsing cost more than running it): on
  PostgreSQL one ``INSERT ... SELECT FROM unnest(arrays)``, on SQLite one
  cached ``INSERT`` run ``executemany``-style;
- ``RETURNING`` gives the new jobs; only the pairs that already had a job
  (duplicates, rare on the hot path) are looked up.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import Table, bindparam, select, text, tuple_, update
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import Session

from fileproc.events import ObjectEvent
from fileproc.state.models import JobRow, JobStatus, utcnow
from fileproc.state.records import Job, aware

Key = tuple[str, str, str, str]
"""(pipeline, bucket, key, version): what makes a job unique."""

_JOBS: Table = JobRow.__table__  # type: ignore[assignment]
_KEY_COLUMNS = (_JOBS.c.pipeline, _JOBS.c.bucket, _JOBS.c.key, _JOBS.c.version)
_JOB_COLUMNS = (_JOBS.c.id, *_KEY_COLUMNS, _JOBS.c.status, _JOBS.c.step_index, _JOBS.c.error, _JOBS.c.created_at,
                _JOBS.c.updated_at, _JOBS.c.finished_at, _JOBS.c.event)
# SQLite allows 32,766 host parameters; four per looked-up key.
_LOOKUP_CHUNK = 2000

_PG_INSERT = text("""
    INSERT INTO jobs (pipeline, bucket, key, version, etag, event, status, step_index, sends, sent_at,
                      created_at, updated_at)
    SELECT w.p, w.b, w.k, w.v, w.t, CAST(w.e AS json), :status, 0, :sends,
           CASE WHEN :sending THEN now() END, now(), now()
    FROM unnest(CAST(:p AS text[]), CAST(:b AS text[]), CAST(:k AS text[]), CAST(:v AS text[]),
                CAST(:t AS text[]), CAST(:e AS text[])) AS w(p, b, k, v, t, e)
    ON CONFLICT DO NOTHING
    RETURNING id, pipeline, bucket, key, version, created_at
""")


def create_jobs(s: Session, wanted: Iterable[tuple[str, ObjectEvent]], *, sending: bool,
                sqlite_db: bool) -> list[tuple[Job, bool]]:
    """See :meth:`fileproc.state.Database.create_jobs`; a pair named twice in one call gets one job.

    A removal is recorded after what came before it in ``wanted`` and before
    what comes after (see :func:`_retire_before_removal`), so a batch that
    holds an upload, its deletion and a re-upload of the same bytes makes a
    job for the re-upload.
    """
    items = list(wanted)
    out: list[tuple[Job, bool]] = []
    start = 0
    for end, (_, event) in enumerate(items, 1):
        if event.event_name.startswith(REMOVED):
            out += _create(s, items[start:end], sending=sending, sqlite_db=sqlite_db)
            start = end
    return out + _create(s, items[start:], sending=sending, sqlite_db=sqlite_db)


def _create(s: Session, items: list[tuple[str, ObjectEvent]], *, sending: bool,
            sqlite_db: bool) -> list[tuple[Job, bool]]:
    if not items:
        return []
    events: dict[Key, dict[str, Any]] = {}
    for pipeline, event in items:
        events.setdefault((pipeline, event.bucket, event.key, event.version), event.to_dict())
    insert = _insert_sqlite if sqlite_db else _insert_postgres
    new = insert(s, events, sending)
    jobs = {key: Job(job_id, *key, JobStatus.QUEUED, 0, None, at, at, None, events[key], [], [])
            for key, (job_id, at) in new.items()}
    jobs |= _existing(s, [key for key in events if key not in jobs])
    for key, (job_id, _) in new.items():
        if str(events[key].get("event_name", "")).startswith(REMOVED):
            _retire_before_removal(s, key, job_id, events[key].get("sequencer"))
    out, reported = [], set()
    for pipeline, event in items:
        key = (pipeline, event.bucket, event.key, event.version)
        out.append((jobs[key], key in new and key not in reported))
        reported.add(key)
    return out


REMOVED = "s3:ObjectRemoved:"

_CREATIONS_BEFORE = (select(_JOBS.c.id, _JOBS.c.version, _JOBS.c.event)
                     .where(_JOBS.c.pipeline == bindparam("p"), _JOBS.c.bucket == bindparam("b"),
                            _JOBS.c.key == bindparam("k"), _JOBS.c.version == _JOBS.c.etag,
                            _JOBS.c.id < bindparam("removal")))


def _retire_before_removal(s: Session, key: Key, removal_id: int, sequencer: str | None) -> None:
    """Make the key's earlier uploads no longer stand for its content: the object was deleted since.

    A job's key holds the etag when the store gave no version id, so an
    object deleted and uploaded again with the same bytes would find its old
    job and never be processed again (for a pipeline that takes removals,
    that leaves e.g. a tombstone in the search index). So when a pipeline's
    removal job is new, the same pipeline's earlier upload jobs of that key
    get ``~removed-<removal job id>`` added to their version (and lose their
    etag, which the reconciler matches listings with): the next upload is a
    new job, and duplicate notifications of *that* upload find it. An upload
    whose S3 ``sequencer`` orders it after the removal (notifications can
    arrive out of order) keeps its job.
    """
    pipeline, bucket, object_key, _ = key
    for row in s.execute(_CREATIONS_BEFORE, {"p": pipeline, "b": bucket, "k": object_key, "removal": removal_id}):
        if _later(dict(row.event or {}).get("sequencer"), sequencer):
            continue
        s.execute(update(_JOBS).where(_JOBS.c.id == row.id)
                  .values(version=f"{row.version}~removed-{removal_id}"[:255], etag=None))


def _later(sequencer: str | None, than: str | None) -> bool:
    """Whether S3 sequencer ``sequencer`` comes after ``than`` (hex strings, compared at equal length)."""
    if not sequencer or not than:
        return False
    width = max(len(sequencer), len(than))
    return sequencer.rjust(width, "0").upper() > than.rjust(width, "0").upper()


def _insert_postgres(s: Session, events: dict[Key, dict[str, Any]], sending: bool) -> dict[Key, tuple[int, datetime]]:
    # The database's clock, inside the statement: no round trip to read it first.
    keys = list(events)
    rows = s.execute(_PG_INSERT, {
        "p": [k[0] for k in keys], "b": [k[1] for k in keys], "k": [k[2] for k in keys],
        "v": [k[3] for k in keys], "t": [events[k].get("etag") for k in keys],
        "e": [json.dumps(events[k]) for k in keys],
        "status": str(JobStatus.QUEUED), "sends": 1 if sending else 0, "sending": sending,
    })
    return {(r.pipeline, r.bucket, r.key, r.version): (r.id, aware(r.created_at) or utcnow()) for r in rows}


def _insert_sqlite(s: Session, events: dict[Key, dict[str, Any]], sending: bool) -> dict[Key, tuple[int, datetime]]:
    now = utcnow()  # SQLite lives on this host: its clock is ours (as Database.now)
    rows = [{"pipeline": k[0], "bucket": k[1], "key": k[2], "version": k[3], "etag": event.get("etag"),
             "event": event,
             "status": JobStatus.QUEUED, "step_index": 0, "sends": 1 if sending else 0,
             "sent_at": now if sending else None, "created_at": now, "updated_at": now}
            for k, event in events.items()]
    statement = sqlite.insert(_JOBS).on_conflict_do_nothing().returning(_JOBS.c.id, *_KEY_COLUMNS)
    return {(r.pipeline, r.bucket, r.key, r.version): (r.id, now) for r in s.execute(statement, rows)}


def _existing(s: Session, keys: list[Key]) -> dict[Key, Job]:
    found = {}
    for start in range(0, len(keys), _LOOKUP_CHUNK):
        chunk = keys[start:start + _LOOKUP_CHUNK]
        for row in s.execute(select(*_JOB_COLUMNS).where(tuple_(*_KEY_COLUMNS).in_(chunk))):
            created, updated = aware(row.created_at), aware(row.updated_at)
            assert created is not None and updated is not None
            found[(row.pipeline, row.bucket, row.key, row.version)] = Job(
                row.id, row.pipeline, row.bucket, row.key, row.version, row.status, row.step_index, row.error,
                created, updated, aware(row.finished_at), dict(row.event), [], [])
    return found


__all__ = ["create_jobs"]
