"""A step's two transactions, its lease and its fence, on a real database.

Each test plays the workers by hand (start_step / finish_step / take_sends),
so a worker that dies or is cut off at any point is exactly reproducible.
SQLite for all of them; the database's clock is checked on PostgreSQL too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from fileproc.events import ObjectEvent
from fileproc.state import Database, Output, StepEnd, StepStart
from fileproc.state import models as state_models
from fileproc.state.models import JobRow
from fileproc.state.records import aware
from tests.test_runner import make_service, upload


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        yield Database(f"sqlite:///{tmp_path / 'state.db'}")
        return
    url = request.getfixturevalue("postgres_url")
    database = Database(url)
    with database.session() as s:  # a clean slate per test on the shared server
        for table in ("outputs", "attempts", "jobs"):
            s.execute(state_models.Base.metadata.tables[table].delete())
    yield database


def new_job(db: Database, key: str = "a.jpg", *, sending: bool = False) -> int:
    ((job, created),) = db.create_jobs([("p", ObjectEvent("inbox", key, etag="e1"))], sending=sending)
    assert created
    return job.id


def start(db: Database, job_id: int, worker: str, lease: float = 30) -> StepStart:
    started = db.start_step(job_id, 0, worker, lease, function_of=lambda *_: "f")
    assert isinstance(started, StepStart), started
    return started


def end(started: StepStart, outcome: str = "succeeded", **extra: object) -> StepEnd:
    status = {"succeeded": "succeeded", "next": "succeeded", "retry": "failed", "failed": "failed"}[outcome]
    return StepEnd(job_id=started.job.id, step_index=0, attempt_id=started.attempt_id, attempt_status=status,
                   outcome=outcome, **extra)  # type: ignore[arg-type]


def expire_lease(db: Database, job_id: int) -> None:
    """What a dead or cut-off worker looks like from the database: its lease is in the past."""
    with db.session() as s:
        s.execute(update(JobRow).where(JobRow.id == job_id)
                  .values(lease_until=db.now(s) - timedelta(seconds=1)))


OUT = [Output("out", "a.jpg/thumb.webp", 10, "x", "image/webp")]


def test_a_cut_off_worker_cannot_finish_a_step_another_took_over(db: Database) -> None:
    job_id = new_job(db)
    first = start(db, job_id, "host-a")
    expire_lease(db, job_id)  # host A is cut off for longer than its lease
    second = start(db, job_id, "host-b")
    assert second.lost == 1
    assert db.finish_step(end(second, outputs=OUT))
    # Host A comes back with its (late) result: refused, recorded as such, nothing else changed.
    assert not db.finish_step(end(first, outputs=[*OUT, Output("out", "late.txt", 1, "y", "text/plain")]))
    assert not db.renew_lease(job_id, first.attempt_id, 30)
    job = db.get_job(job_id)
    assert job is not None and job.status == "succeeded"
    assert [o.key for o in job.outputs] == ["a.jpg/thumb.webp"]
    statuses = {a.worker: a.status for a in job.attempts}
    assert statuses == {"host-a": "late", "host-b": "succeeded"}
    late = next(a for a in job.attempts if a.worker == "host-a")
    assert "result refused" in (late.error or "")


def test_what_a_step_records_reads_back_the_same_through_the_orm(db: Database) -> None:
    # The step's statements run on the driver's cursor (state.steps.Prepared), every other
    # read goes through SQLAlchemy: times, JSON, flags and text must mean the same to both.
    job_id = new_job(db, "dir/naïve café.jpg")
    started = start(db, job_id, "host-a")
    assert started.job.key == "dir/naïve café.jpg" and started.job.event["key"] == "dir/naïve café.jpg"
    result = {"pages": 3, "labels": ["a", "ü"], "nested": {"ok": True}}
    assert db.finish_step(end(started, duration_ms=12, peak_memory_kb=3456, bytes_read=7, bytes_written=10,
                              cold_start=True, recycled="timed out", result=result, outputs=OUT))
    job = db.get_job(job_id)
    assert job is not None and job.status == "succeeded" and job.finished_at is not None
    (attempt,) = job.attempts
    assert (attempt.status, attempt.worker, attempt.function) == ("succeeded", "host-a", "f")
    assert (attempt.duration_ms, attempt.peak_memory_kb, attempt.bytes_read, attempt.bytes_written) == (12, 3456, 7, 10)
    assert attempt.cold_start is True and attempt.recycled == "timed out" and attempt.result == result
    assert attempt.started_at.tzinfo is not None and attempt.finished_at is not None
    assert timedelta(0) <= attempt.finished_at - attempt.started_at < timedelta(seconds=30)
    assert abs(attempt.started_at - job.created_at) < timedelta(seconds=30)
    assert job.outputs == [Output("out", "a.jpg/thumb.webp", 10, "x", "image/webp", 0)]


def test_a_late_worker_cannot_requeue_or_fail_a_finished_job(db: Database) -> None:
    job_id = new_job(db)
    first = start(db, job_id, "host-a")
    expire_lease(db, job_id)
    assert db.finish_step(end(start(db, job_id, "host-b")))
    assert not db.finish_step(end(first, "retry", retry_in=1, reason="boom"))
    assert not db.finish_step(end(first, "failed", reason="boom"))
    job = db.get_job(job_id)
    assert job is not None and job.status == "succeeded" and job.error is None


def test_a_live_lease_cannot_be_taken(db: Database) -> None:
    job_id = new_job(db)
    start(db, job_id, "host-a")
    taken = db.start_step(job_id, 0, "host-b", 30, function_of=lambda *_: "f")
    assert not isinstance(taken, StepStart) and taken is not None and taken.status == "running"


def test_outputs_are_recorded_once_per_job_step_and_key(db: Database) -> None:
    def newest() -> int:  # what last_output_id reads on the driver's connection, through the ORM
        with db.reading() as s:
            return int(s.scalar(select(func.max(state_models.OutputRow.id))) or 0)

    assert db.last_output_id() == newest() == 0  # what the idle indexer asks four times a second
    job_id = new_job(db)
    assert db.finish_step(end(start(db, job_id, "w"), outputs=[*OUT, *OUT]))
    job = db.get_job(job_id)
    assert job is not None and len(job.outputs) == 1
    assert db.last_output_id() == newest() > 0


def test_a_step_killed_between_its_transactions_is_sent_again_and_counted_once(db: Database) -> None:
    job_id = new_job(db, sending=True)
    assert db.take_sends(resend_after=60) == []  # sent at creation; its step starts
    start(db, job_id, "doomed")  # ... and the worker dies before its second transaction
    assert db.take_sends(resend_after=60) == []  # the lease is still live
    expire_lease(db, job_id)
    (again,) = db.take_sends(resend_after=60)
    assert again.job_id == job_id and again.step_index == 0
    assert db.take_sends(resend_after=60) == []  # once per expired lease, not on every pass
    assert db.finish_step(end(start(db, job_id, "rescuer"), outputs=OUT))
    job = db.get_job(job_id)
    assert job is not None and job.status == "succeeded"
    assert [a.status for a in job.attempts] == ["lost", "succeeded"]
    assert len(job.outputs) == 1


def test_a_message_lost_by_the_broker_is_sent_again(db: Database) -> None:
    job_id = new_job(db, sending=True)
    assert db.take_sends(resend_after=0.5) == []
    time.sleep(0.6)  # the message was lost: nothing started the step
    (again,) = db.take_sends(resend_after=0.5)
    assert again.job_id == job_id


def test_a_retry_waits_out_its_backoff_even_if_a_message_turns_up_early(db: Database) -> None:
    job_id = new_job(db)
    db.take_sends(resend_after=60)
    assert db.finish_step(end(start(db, job_id, "w"), "retry", retry_in=1.0, reason="flaky"))
    job = db.get_job(job_id)
    assert job is not None and job.status == "queued"
    assert db.take_sends(resend_after=60) == []  # not due yet: no message in the broker meanwhile
    early = db.start_step(job_id, 0, "w", 30, function_of=lambda *_: "f")
    assert not isinstance(early, StepStart)  # a duplicate of the old message cannot jump the delay
    deadline = time.monotonic() + 5
    while not (sends := db.take_sends(resend_after=60)):
        assert time.monotonic() < deadline, "the retry never became due"
        time.sleep(0.1)
    assert [s.job_id for s in sends] == [job_id]
    assert start(db, job_id, "w").failures == 1


def test_leases_use_the_database_clock(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # PostgreSQL only: SQLite lives on the workers' own host, so its clock is theirs.
    db = Database(postgres_url)
    with db.session() as s:
        for table in ("outputs", "attempts", "jobs"):
            s.execute(state_models.Base.metadata.tables[table].delete())
    job_id = new_job(db)
    start(db, job_id, "host-a", lease=30)
    # Host B's clock is an hour ahead: by its clock A's lease ran out long ago. It must not matter.
    real = state_models.utcnow
    import fileproc.state

    for module in (state_models, fileproc.state):
        monkeypatch.setattr(module, "utcnow", lambda: real() + timedelta(hours=1))
    taken = db.start_step(job_id, 0, "host-b", 30, function_of=lambda *_: "f")
    assert not isinstance(taken, StepStart)
    assert db.take_sends(resend_after=60) == []


# -- through run_step: the heartbeat --------------------------------------------------


def test_a_step_longer_than_its_lease_keeps_it(tmp_path: Path) -> None:
    from fileproc.runtime.runner import run_step

    service = make_service(tmp_path, [{"function": "slow", "params": {"seconds": 3}}])
    service.settings.runtime.lease_seconds = 2
    job = upload(service, "a.bin", b"abc")
    outcomes: list[str] = []
    runner = threading.Thread(target=lambda: outcomes.append(run_step(service, job.id, 0, "w1").status))
    runner.start()
    deadline = time.monotonic() + 10
    while (current := service.db.get_job(job.id)) is not None and current.status != "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(2.5)  # past the first lease: only the heartbeat keeps it
    assert run_step(service, job.id, 0, "w2").status == "busy"
    runner.join(20)
    assert outcomes == ["succeeded"]
    done = service.db.get_job(job.id)
    assert done is not None and [a.worker for a in done.attempts] == ["w1"]


def test_a_step_whose_lease_is_taken_stops_and_its_result_is_refused(tmp_path: Path) -> None:
    from fileproc.runtime.runner import run_step

    pidfile = tmp_path / "pid"
    service = make_service(tmp_path, [{"function": "slow", "params": {"seconds": 30, "pidfile": str(pidfile)}}])
    service.settings.runtime.lease_seconds = 3
    job = upload(service, "a.bin", b"abc")
    outcomes: list[str] = []
    runner = threading.Thread(target=lambda: outcomes.append(run_step(service, job.id, 0, "w1").status))
    runner.start()
    deadline = time.monotonic() + 10
    while not pidfile.exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    expire_lease(service.db, job.id)  # as if w1 had been cut off: another worker takes the step
    taker = service.db.start_step(job.id, 0, "w2", 30, function_of=service.function_name)
    assert isinstance(taker, StepStart)
    runner.join(10)  # w1 notices at its next renewal and stops its step at once
    assert not runner.is_alive() and outcomes == ["late"]
    step_pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):
        import os

        os.kill(step_pid, 0)
    done = service.db.get_job(job.id)
    assert done is not None and done.status == "running" and done.outputs == []
    assert [a.status for a in done.attempts] == ["late", "running"]


def test_a_key_no_store_may_hold_fails_at_once_not_retried(tmp_path: Path) -> None:
    from fileproc.runtime.runner import run_step

    service = make_service(tmp_path, [{"function": "tiny", "retries": 3}])
    # Rejected at the door today; a job made before that (or by hand) must still not loop.
    ((job, _),) = service.db.create_jobs([("p", ObjectEvent("inbox", "a/../b.txt", etag="e"))], sending=False)
    assert run_step(service, job.id, 0, "w").status == "failed"
    done = service.db.get_job(job.id)
    assert done is not None and done.status == "failed" and "invalid object key" in (done.error or "")
    assert len(done.attempts) == 1


def test_scratch_folders_of_dead_workers_are_removed_at_start(tmp_path: Path) -> None:
    import os
    import subprocess

    from fileproc.runtime.runner import clean_scratch

    service = make_service(tmp_path, [{"function": "tiny"}])
    dead = subprocess.Popen(["true"])  # a pid that no longer runs: a worker killed earlier
    dead.wait()
    root = service.settings.data_dir / "scratch"
    (root / f"{dead.pid}.7-0-1").mkdir(parents=True)
    (root / f"{dead.pid}.7-0-1" / "input.jpg").write_bytes(b"left behind by a kill -9")
    (root / f"{os.getpid()}.8-0-1").mkdir()  # a step of a live worker on this host
    assert clean_scratch(service) == 1
    assert sorted(p.name for p in root.iterdir()) == [f"{os.getpid()}.8-0-1"]


def test_a_timed_out_step_leaves_no_scratch_folder(tmp_path: Path) -> None:
    from fileproc.runtime.runner import run_step

    service = make_service(tmp_path, [{"function": "hang", "params": {"pidfile": str(tmp_path / "pid")}}])
    job = upload(service, "a.bin", b"x")
    assert run_step(service, job.id, 0, "w").status == "failed"
    root = service.settings.data_dir / "scratch"
    assert not root.exists() or list(root.iterdir()) == []


def test_a_worker_cut_off_from_the_database_stops_its_step_before_its_lease_runs_out(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from fileproc.runtime.runner import run_step
    from fileproc.state import DatabaseUnavailable

    pidfile = tmp_path / "pid"
    service = make_service(tmp_path, [{"function": "slow", "params": {"seconds": 30, "pidfile": str(pidfile)}}])
    service.settings.runtime.lease_seconds = 3
    job = upload(service, "a.bin", b"abc")
    stopped: list[float] = []

    def cut_off(*_: object) -> bool:
        raise DatabaseUnavailable("state database error: timeout expired")

    monkeypatch.setattr(service.db, "renew_lease", cut_off)
    real_finish = service.db.finish_step

    def finish(end: StepEnd) -> bool:
        stopped.append(time.monotonic())
        with service.db.session() as s:  # where the lease stands by the database's clock
            row = s.get(JobRow, job.id)
            assert row is not None and row.lease_until is not None
            lease_until = aware(row.lease_until)
            assert lease_until is not None
            stopped.append((lease_until - service.db.now(s)).total_seconds())
        return real_finish(end)

    monkeypatch.setattr(service.db, "finish_step", finish)
    assert run_step(service, job.id, 0, "w").status == "retry"
    assert stopped[1] > 0, "the step was stopped only after its lease had run out"
    with pytest.raises(ProcessLookupError):
        os.kill(int(pidfile.read_text()), 0)
    done = service.db.get_job(job.id)
    assert done is not None and done.status == "queued"
    assert [a.status for a in done.attempts] == ["lost"]
    assert "could not keep the step's lease" in (done.attempts[0].error or "")


def test_the_relay_checkpoints_sqlite_so_commits_never_have_to(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'state.db'}")
    db.create_jobs([("p", ObjectEvent("inbox", f"k{n}", etag=f"e{n}")) for n in range(3000)], sending=False)
    before = (tmp_path / "state.db").stat().st_size
    assert (tmp_path / "state.db-wal").stat().st_size > before  # the commits left it all in the log
    db.checkpoint()
    assert (tmp_path / "state.db").stat().st_size > before + 100_000  # now in the database itself
