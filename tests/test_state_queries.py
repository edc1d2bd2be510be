"""The state database's read models: usage, function logs, activity and queues, drift, the metrics' totals.

Each on a real SQLite database, filled through the same calls fileproc makes
(create_jobs, start_step, finish_step, drift.record); each answer is plain data.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fileproc.config import Settings, UsageSettings
from fileproc.events import ObjectEvent
from fileproc.state import Database, StepEnd, StepStart, sqlite_file
from fileproc.state import metrictotals as totals
from fileproc.state.activity import activity, waiting_steps
from fileproc.state.attempt_logs import attempt_logs
from fileproc.state.drift import Drift, found_without_job, recent_by_bucket, record
from fileproc.state.usage import BilledAttempt, billed_attempts, summarise, usage


@pytest.fixture
def db(tmp_path: Path) -> Database:
    return Database(f"sqlite:///{tmp_path / 'state.db'}")


def job(db: Database, key: str, pipeline: str = "p", *, uploaded: datetime | None = None) -> int:
    event = ObjectEvent("inbox", key, etag="e-" + key, time=uploaded or datetime.now(UTC))
    ((made, created),) = db.create_jobs([(pipeline, event)], sending=True)
    assert created
    return made.id


def attempt(db: Database, job_id: int, function: str = "f", status: str = "succeeded", *,
            outcome: str | None = None, **end: object) -> int:
    """One attempt of the job's first step, ended with ``status`` (None: left running); its id."""
    started = db.start_step(job_id, 0, "w1", 30, function_of=lambda *_: function)
    assert isinstance(started, StepStart), started
    if status != "running":
        db.finish_step(StepEnd(job_id=job_id, step_index=0, attempt_id=started.attempt_id, attempt_status=status,
                               outcome=outcome or ("succeeded" if status == "succeeded" else "failed"),
                               **end))  # type: ignore[arg-type]
    return started.attempt_id


# -- usage ----------------------------------------------------------------------------------------------------------


def test_usage_groups_billed_attempts_and_prices_them(db: Database) -> None:
    attempt(db, job(db, "a"), "resize", billed_ms=100, memory_mb=1024, duration_ms=99, cold_start=True)
    attempt(db, job(db, "b"), "resize", "failed", billed_ms=300, memory_mb=512, duration_ms=250)
    attempt(db, job(db, "c", "_invoke.resize"), "resize", duration_ms=7)  # before metering: 7 ms billed, no memory
    attempt(db, job(db, "d"), "index", "skipped", outcome="skipped", duration_ms=5)  # never ran a handler
    attempt(db, job(db, "e"), "index", "running")  # no end yet
    settings = Settings(usage=UsageSettings(price_per_request=0.5, price_per_gb_second=2.0))

    (resize,) = usage(db, settings)
    assert (resize.group, resize.requests, resize.errors, resize.cold_starts) == ("resize", 3, 1, 1)
    assert resize.billed_ms == 407 and resize.duration_ms == 356
    assert resize.gb_seconds == pytest.approx(0.1 + 0.3 * 0.5)
    assert resize.cost == pytest.approx(3 * 0.5 + resize.gb_seconds * 2.0)
    assert resize.to_dict("function")["function"] == "resize"

    by_pipeline = {u.group: u.requests for u in usage(db, settings, by="pipeline")}
    assert by_pipeline == {"(invoke)": 1, "p": 2}  # direct invocations together
    (today,) = usage(db, settings, by="day")
    assert today.group == datetime.now(UTC).strftime("%Y-%m-%d")
    assert [u.requests for u in usage(db, settings, pipeline="_invoke.resize")] == [1]
    assert usage(db, settings, function="index") == []
    assert usage(db, settings, since=datetime.now(UTC) + timedelta(minutes=1)) == []
    with pytest.raises(ValueError, match="--by must be one of"):
        usage(db, settings, by="host")


def test_billed_attempts_are_plain_rows_and_summarise_needs_no_database(db: Database) -> None:
    attempt(db, job(db, "a"), "resize", billed_ms=2000, memory_mb=2048, duration_ms=1999)
    (row,) = billed_attempts(db)
    assert isinstance(row, BilledAttempt) and (row.function, row.pipeline, row.billed_ms) == ("resize", "p", 2000)
    (group,) = summarise([row, row._replace(function="other")], "pipeline", price_per_request=0,
                         price_per_gb_second=1)
    assert (group.group, group.requests, group.gb_seconds, group.cost) == ("p", 2, 8.0, 8.0)


# -- what functions printed -----------------------------------------------------------------------------------------


def test_attempt_logs_are_the_last_ones_oldest_first_and_one_by_id(db: Database) -> None:
    ids = [attempt(db, job(db, f"k{n}"), "resize", log=f"line {n}\n") for n in range(4)]
    attempt(db, job(db, "quiet"), "resize")  # printed nothing: no log
    attempt(db, job(db, "other"), "index", log="not resize\n")

    assert [a.log for a in attempt_logs(db, "resize", limit=2)] == ["line 2\n", "line 3\n"]
    assert [a.id for a in attempt_logs(db, "resize", after=ids[1])] == ids[2:]
    (one,) = attempt_logs(db, "resize", attempt_id=ids[0])
    assert (one.log, one.step_index) == ("line 0\n", 0)
    assert attempt_logs(db, "resize", attempt_id=ids[0], after=ids[0]) == []
    assert attempt_logs(db, "missing") == []


# -- activity and queues --------------------------------------------------------------------------------------------


def test_activity_counts_jobs_of_the_window_by_status_now(db: Database) -> None:
    attempt(db, job(db, "done"))
    attempt(db, job(db, "broken"), status="failed")
    waiting = job(db, "waiting")
    job(db, "also-waiting")

    found = activity(db)
    assert found.hour == found.day
    assert found.day == {"queued": 2, "running": 0, "succeeded": 1, "failed": 1, "skipped": 0}
    assert sorted(status for status, _ in found.ended) == ["failed", "succeeded"]
    assert all(found.now - timedelta(hours=1) <= at <= found.now for _, at in found.ended)
    assert found.oldest_queued == waiting
    assert activity(db, hour=timedelta(0), day=timedelta(0)).day["queued"] == 0


def test_waiting_steps_count_queued_jobs_per_pipeline_and_step(db: Database) -> None:
    assert waiting_steps(db) == []
    job(db, "a")
    job(db, "b")
    job(db, "c", "q")
    attempt(db, job(db, "d"))  # not waiting
    found = {(w.pipeline, w.step_index): w for w in waiting_steps(db)}
    assert {key: w.count for key, w in found.items()} == {("p", 0): 2, ("q", 0): 1}
    assert all(0 <= w.oldest_seconds < 60 for w in found.values())


# -- drift ------------------------------------------------------------------------------------------------------------


def test_drift_by_bucket_and_the_passes_that_found_a_key(db: Database) -> None:
    now = datetime.now(UTC)
    record(db, Drift("inbox", finished_at=now - timedelta(days=3), new_objects=5, sample=["old.jpg"]))
    record(db, Drift("inbox", finished_at=now - timedelta(hours=2), new_objects=2, sample=["a.jpg", "b.jpg"]))
    record(db, Drift("inbox", finished_at=now - timedelta(minutes=1), new_versions=1, sample=["a.jpg"]))
    record(db, Drift("other", finished_at=now))

    found = recent_by_bucket(db, timedelta(days=1))
    assert [(d.bucket, d.objects) for d in found] == [("inbox", 3), ("other", 0)]
    bucket, objects, last = found[0]  # unpacks as (bucket, objects, last pass)
    assert (bucket, objects) == ("inbox", 3)
    assert last is not None and abs((last - (now - timedelta(minutes=1))).total_seconds()) < 1

    finds = found_without_job(db, "inbox", "a.jpg")
    assert len(finds) == 2 and finds[0] is not None and finds[1] is not None and finds[0] > finds[1]
    assert found_without_job(db, "inbox", "a.jpg", passes=1) == finds[:1]  # the latest pass only
    assert found_without_job(db, "inbox", "old.jpg", passes=2) == []
    assert found_without_job(db, "inbox", "old.jpg") == [now - timedelta(days=3)]
    assert found_without_job(db, "other", "a.jpg") == []


# -- the metrics' running totals --------------------------------------------------------------------------------------


def test_settled_attempts_are_added_once_and_the_marks_move_past_them(db: Database) -> None:
    uploaded = datetime.now(UTC) - timedelta(minutes=5)
    first = attempt(db, job(db, "a", uploaded=uploaded), "resize", duration_ms=40, cold_start=True)
    running = attempt(db, job(db, "b"), "resize", "running")
    attempt(db, job(db, "c"), "index", "failed", duration_ms=5)

    found = totals.settled(db, settle=timedelta(0), batch=100, job_batch=100)
    assert found.marks == totals.Marks() and not found.nothing and not found.more
    assert [(s.id, s.function, s.status) for s in found.ended] == [(first, "resize", "succeeded"),
                                                                   (first + 2, "index", "failed")]
    sample = found.ended[0]
    assert sample.event_time == uploaded and sample.started_at is not None and sample.started_at > uploaded
    assert found.running == [running] and found.jobs_created == {"p": 3} and found.jobs == 3

    values = {("attempts", ("resize", "succeeded")): 1.0, ("attempts", ("index", "failed")): 1.0,
              ("jobs_created", ("p",)): 3.0}
    assert totals.add_settled(db, found, values)
    assert not totals.add_settled(db, found, values)  # the marks moved: not added twice
    again = totals.settled(db, settle=timedelta(0), batch=100, job_batch=100)
    assert again.marks == totals.Marks(attempts=first + 2, pending=(running,), jobs=3) and again.nothing

    snap = totals.snapshot(db)
    assert snap.totals == values and snap.fresh == [] and snap.fresh_jobs == {}
    assert snap.unfinished == {("p", "running"): 1, ("p", "failed"): 1}

    db.finish_step(StepEnd(job_id=2, step_index=0, attempt_id=running, attempt_status="succeeded",
                           outcome="succeeded", duration_ms=9))
    assert [s.id for s in totals.snapshot(db).fresh] == [running]  # ended: shown afresh until rolled up
    ended = totals.settled(db, settle=timedelta(0), batch=100, job_batch=100)
    assert [s.id for s in ended.ended] == [running] and ended.running == [] and not ended.nothing


def test_a_snapshot_while_catching_up_has_only_the_totals(db: Database) -> None:
    attempt(db, job(db, "a"))
    assert [s.status for s in totals.snapshot(db).fresh] == ["succeeded"]
    assert totals.snapshot(db).fresh_jobs == {"p": 1}
    assert totals.snapshot(db, fresh=False).fresh == [] and totals.snapshot(db, fresh=False).fresh_jobs == {}


def test_unsettled_attempts_wait_and_a_full_batch_asks_for_more(db: Database) -> None:
    for n in range(3):
        attempt(db, job(db, f"k{n}"))
    assert totals.settled(db, settle=timedelta(hours=1), batch=100, job_batch=100).nothing
    found = totals.settled(db, settle=timedelta(0), batch=2, job_batch=100)
    assert len(found.ended) == 2 and found.more


# -- the database's file ---------------------------------------------------------------------------------------------


def test_sqlite_file_names_the_file_of_a_sqlite_url_only() -> None:
    assert sqlite_file("sqlite:////var/lib/fileproc/state.db") == Path("/var/lib/fileproc/state.db")
    assert sqlite_file("sqlite:///data/state.db") == Path("data/state.db")
    assert sqlite_file("sqlite://") is None
    assert sqlite_file("postgresql+psycopg://u:p@db/fileproc") is None
