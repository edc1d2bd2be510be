"""run_step without a broker: limits, retries, failures and what gets recorded.

Real local storage and SQLite in a temp dir; the steps run in real child
processes, exactly as in a worker.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy import update

from fileproc import dispatch
from fileproc.app import build
from fileproc.config import load_settings
from fileproc.events import ObjectEvent
from fileproc.runtime.runner import run_step
from fileproc.service import Service
from fileproc.state import Job, StepStart
from fileproc.state.models import JobRow
from tests.helpers import image_bytes, local_service
from tests.procs import process_running, write_config
from tests.servers import free_port


def make_service(tmp_path: Path, steps: list[dict[str, Any]]) -> Service:
    return local_service(tmp_path, [{"name": "p", "match": {"bucket": "inbox"}, "steps": steps,
                                     "output": {"bucket": "out", "key": "{key}/{name}"}}])


def upload(service: Service, key: str, data: bytes) -> Job:
    info = service.storage.put("inbox", key, data)
    (item,) = dispatch.submit(service, ObjectEvent("inbox", key, size=info.size, etag=info.etag), send=False)
    return item.job


def test_a_step_runs_with_a_lambda_shaped_event_and_context(tmp_path: Path) -> None:
    service = make_service(tmp_path, [{"function": "describe", "params": {"answer": 42}, "timeout": 30}])
    job = upload(service, "dir/a b+c.txt", b"hello")
    assert run_step(service, job.id, 0, "test-worker").status == "succeeded"
    done = service.db.get_job(job.id)
    assert done is not None and done.status == "succeeded"
    assert [o.key for o in done.outputs] == ["dir/a b+c.txt/describe.json"]
    with service.storage.open("out", "dir/a b+c.txt/describe.json") as fh:
        seen = json.load(fh)
    assert seen["key"] == "dir/a+b%2Bc.txt"  # URL-encoded, as AWS sends it
    assert seen["input_key"] == "dir/a b+c.txt"
    assert seen["function_name"] == "describe" and seen["params"] == {"answer": 42}
    assert 0 < seen["remaining_ms"] <= 30_000 and seen["path_exists"] is True
    assert seen["request_id"].startswith(f"{job.id}-0-")
    meta = service.storage.head("out", "dir/a b+c.txt/describe.json").metadata
    assert meta["fileproc-pipeline"] == "p" and meta["fileproc-source-key"] == "dir/a%20b%2Bc.txt"
    (attempt,) = done.attempts
    assert attempt.worker == "test-worker" and attempt.bytes_read == 5 and attempt.peak_memory_kb


def test_running_a_finished_step_again_does_nothing(tmp_path: Path) -> None:
    service = make_service(tmp_path, [{"function": "thumbnail"}])
    job = upload(service, "a.jpg", image_bytes())
    assert run_step(service, job.id, 0, "w").status == "succeeded"
    assert run_step(service, job.id, 0, "w").status == "stale"
    done = service.db.get_job(job.id)
    assert done is not None and len(done.attempts) == 1


def test_timeout_stops_the_step_and_what_it_started(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    service = make_service(tmp_path, [{"function": "hang", "params": {"pidfile": str(pidfile)}}])
    job = upload(service, "a.bin", b"x")
    outcome = run_step(service, job.id, 0, "w")
    assert outcome.status == "failed"
    done = service.db.get_job(job.id)
    assert done is not None and done.status == "failed"
    assert "timed out after 1.5 s" in (done.error or "")
    assert [a.status for a in done.attempts] == ["timed_out"]
    assert not process_running(int(pidfile.read_text()))  # the `sleep 300` the function started is gone too


def backoff_passed(service: Service, job_id: int) -> None:
    """Fast-forward a retried job past its backoff (the wait itself is tested in test_steps)."""
    with service.db.session() as s:
        s.execute(update(JobRow).where(JobRow.id == job_id).values(send_after=service.db.now(s)))


def test_transient_failures_are_retried_with_backoff(tmp_path: Path) -> None:
    counter = tmp_path / "count"
    service = make_service(tmp_path, [{"function": "flaky", "params": {"counter": str(counter), "succeed_after": 3}}])
    job = upload(service, "a.bin", b"x")
    first = run_step(service, job.id, 0, "w")
    assert first.status == "retry" and first.retry_in is not None and 1 <= first.retry_in <= 3
    queued = service.db.get_job(job.id)
    assert queued is not None and queued.status == "queued" and "dependency not ready" in (queued.error or "")
    assert run_step(service, job.id, 0, "w").status == "stale"  # too early: the backoff is not over
    backoff_passed(service, job.id)
    second = run_step(service, job.id, 0, "w")
    assert second.status == "retry" and second.retry_in is not None and second.retry_in > 3
    backoff_passed(service, job.id)
    assert run_step(service, job.id, 0, "w").status == "succeeded"
    done = service.db.get_job(job.id)
    assert done is not None and [a.status for a in done.attempts] == ["failed", "failed", "succeeded"]


def test_retries_run_out(tmp_path: Path) -> None:
    counter = tmp_path / "count"
    service = make_service(tmp_path, [{"function": "flaky", "retries": 1,
                                       "params": {"counter": str(counter), "succeed_after": 99}}])
    job = upload(service, "a.bin", b"x")
    assert run_step(service, job.id, 0, "w").status == "retry"
    backoff_passed(service, job.id)
    assert run_step(service, job.id, 0, "w").status == "failed"
    done = service.db.get_job(job.id)
    assert done is not None and done.error is not None and "failed 2 times" in done.error


def test_memory_limit(tmp_path: Path) -> None:
    service = make_service(tmp_path, [{"function": "hog"}])
    job = upload(service, "a.bin", b"x")
    assert run_step(service, job.id, 0, "w").status == "failed"
    done = service.db.get_job(job.id)
    assert done is not None and "memory limit of 64 MB" in (done.error or "")


def test_a_step_that_keeps_losing_its_worker_gives_up(tmp_path: Path) -> None:
    service = make_service(tmp_path, [{"function": "thumbnail", "retries": 1}])
    job = upload(service, "a.jpg", image_bytes())
    # Two workers took the step and died with it (their leases ran out at once).
    for _ in range(2):
        claim = service.db.start_step(job.id, 0, "doomed", lease_seconds=0, function_of=service.function_name)
        assert isinstance(claim, StepStart)
    outcome = run_step(service, job.id, 0, "w")
    assert outcome.status == "failed"
    done = service.db.get_job(job.id)
    assert done is not None and done.status == "failed"
    assert "was lost 2 times" in (done.error or "")
    assert [a.status for a in done.attempts] == ["lost", "lost", "failed"]


def test_a_live_lease_makes_a_duplicate_delivery_do_nothing(tmp_path: Path) -> None:
    service = make_service(tmp_path, [{"function": "thumbnail"}])
    job = upload(service, "a.jpg", image_bytes())
    held = service.db.start_step(job.id, 0, "other", lease_seconds=60, function_of=service.function_name)
    assert isinstance(held, StepStart)
    outcome = run_step(service, job.id, 0, "w")
    assert outcome.status == "busy"
    running = service.db.get_job(job.id)
    assert running is not None and running.status == "running" and len(running.attempts) == 1


def test_a_changed_object_supersedes_the_old_notification(tmp_path: Path) -> None:
    service = make_service(tmp_path, [{"function": "thumbnail"}])
    old = upload(service, "a.jpg", image_bytes())
    new = upload(service, "a.jpg", image_bytes() + b"\0")  # same key, new content: a new job
    assert old.id != new.id
    assert run_step(service, old.id, 0, "w").status == "skipped"
    assert run_step(service, new.id, 0, "w").status == "succeeded"
    stale = service.db.get_job(old.id)
    assert stale is not None and "superseded" in (stale.error or "")


def test_a_version_whose_notification_was_lost_gets_its_job_when_an_older_one_is_superseded(
        tmp_path: Path) -> None:
    service = make_service(tmp_path, [{"function": "thumbnail"}])
    old = upload(service, "a.jpg", image_bytes())
    current = service.storage.put("inbox", "a.jpg", image_bytes() + b"\0")  # its notification never comes
    assert run_step(service, old.id, 0, "w").status == "skipped"
    (newer,) = [j for j in service.db.list_jobs() if j.id != old.id]
    assert newer.version == current.etag and newer.status == "queued"
    assert run_step(service, newer.id, 0, "w").status == "succeeded"


def test_outputs_written_into_the_source_bucket_do_not_loop(tmp_path: Path) -> None:
    config = write_config(tmp_path / "fileproc.toml", {
        "data_dir": str(tmp_path / "data"),
        "pipelines": [{"name": "self", "match": {"bucket": "inbox", "suffix": ".jpg"},
                       "steps": [{"function": "thumbnail", "params": {"format": "jpeg"}}],
                       "output": {"bucket": "{bucket}", "key": "thumbs/{key}/{name}"}}],
    })
    service = build(load_settings(config, env={}))
    service.prepare_buckets()
    job = upload(service, "a.jpg", image_bytes())
    assert run_step(service, job.id, 0, "w").status == "succeeded"
    output = service.storage.head("inbox", "thumbs/a.jpg/thumb-256.jpg")
    again = ObjectEvent("inbox", output.key, size=output.size, etag=output.etag, source="watcher",
                        metadata=output.metadata)
    assert dispatch.submit(service, again, send=False) == []
    without_metadata = ObjectEvent("inbox", output.key, size=output.size, etag=output.etag)
    assert dispatch.submit(service, without_metadata, send=False) == []  # known from the outputs table


def test_a_storage_outage_is_retried_not_failed(tmp_path: Path) -> None:
    service = make_service(tmp_path, [{"function": "thumbnail"}])
    job = upload(service, "a.jpg", image_bytes())
    dead = free_port()
    settings = load_settings(tmp_path / "fileproc.toml", env={
        "FILEPROC_STORAGE_BACKEND": "s3", "FILEPROC_STORAGE_ENDPOINT": f"127.0.0.1:{dead}",
        "FILEPROC_STORAGE_SECURE": "false", "FILEPROC_STORAGE_SECRET_KEY": "s3cr3t-value"})
    outcome = run_step(build(settings), job.id, 0, "w")
    assert outcome.status == "retry" and outcome.retry_in is not None
    queued = service.db.get_job(job.id)
    assert queued is not None and queued.status == "queued"
    assert "cannot reach S3 endpoint" in (queued.error or "") and "s3cr3t" not in (queued.error or "")
    backoff_passed(service, job.id)
    assert run_step(service, job.id, 0, "w").status == "succeeded"  # the store is back


def test_any_exception_fails_the_step_with_its_message(tmp_path: Path) -> None:
    service = make_service(tmp_path, [{"function": "unpicklable"}])
    job = upload(service, "a.bin", b"x")
    assert run_step(service, job.id, 0, "w").status == "failed"
    done = service.db.get_job(job.id)
    assert done is not None and done.outputs == []
    assert done.attempts[0].error == "Unpicklable: a failure carrying a lock"
