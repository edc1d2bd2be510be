"""Reconciliation: listing finds what notifications missed, submits it once, and records the drift.

Local storage and SQLite in a temp dir for most tests, a real Redis as the
broker; one test on a real versitygw with no webhook at all; one on a real
`fileproc serve` whose folder watcher is off.
"""

from __future__ import annotations

import io
import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from minio import Minio

from fileproc import dispatch
from fileproc.app import build
from fileproc.config import ReconcileSettings, load_settings
from fileproc.events import ObjectEvent
from fileproc.intake.reconcile import Reconciler, next_interval, reconcile_all, watched_scopes
from fileproc.runtime.runner import run_step
from fileproc.service import Service
from fileproc.state import JobStatus
from fileproc.state.drift import Drift, history, record
from tests.procs import FUNCTIONS_DIR, Process, fileproc, jobs, settled, wait_for, wait_healthy, write_config
from tests.servers import free_port


def pipeline(name: str, bucket: str, out_bucket: str = "out", out_key: str = "out/{key}/{name}",
             **match: Any) -> dict[str, Any]:
    return {"name": name, "match": {"bucket": bucket, **match}, "steps": [{"function": "tiny"}],
            "output": {"bucket": out_bucket, "key": out_key}}


def make_service(tmp_path: Path, pipelines: list[dict[str, Any]], env: dict[str, str] | None = None) -> Service:
    config = write_config(tmp_path / "fileproc.toml", {
        "data_dir": str(tmp_path / "data"),
        "functions": {"paths": [str(FUNCTIONS_DIR)]},
        "pipelines": pipelines,
    })
    service = build(load_settings(config, env=env or {}))
    service.prepare_buckets()
    return service


@pytest.fixture
def local(tmp_path: Path, redis_url: str) -> Service:
    return make_service(tmp_path, [pipeline("p", "inbox")], {"FILEPROC_BROKER_URL": redis_url})


def age(path: Path, seconds: float = 60) -> None:
    """Make a dropped file look written ``seconds`` ago (older than the reconciler's grace)."""
    then = time.time() - seconds
    os.utime(path, (then, then))


# --- the interval ---------------------------------------------------------------------------


def test_a_small_bucket_is_listed_every_min_interval_a_costly_one_less_often_up_to_interval() -> None:
    settings = ReconcileSettings(interval=300, min_interval=60, cpu_budget=0.03)
    assert next_interval(0.0, settings) == 60
    assert next_interval(0.5, settings) == 60  # 0.5 s of CPU every 60 s is under 3 %
    assert next_interval(3.0, settings) == pytest.approx(100)  # 3 s at 3 % of a core: every 100 s
    assert next_interval(30.0, settings) == 300  # capped: never less often than `interval`
    # Ten buckets share the budget: each gets a tenth of it.
    assert next_interval(0.3, settings, buckets=10) == pytest.approx(100)


# --- what is watched ------------------------------------------------------------------------


def test_watched_scopes_follow_the_pipelines(tmp_path: Path) -> None:
    service = make_service(tmp_path, [
        pipeline("photos", "inbox", prefix="photos/"),
        pipeline("raw", "inbox", prefix="photos/raw/"),  # inside photos/: listed once
        pipeline("docs", "inbox", glob="docs/**/*.pdf"),  # the glob's literal start is a prefix
        pipeline("logs", "logs-*"),  # a bucket glob: matched against the store's buckets
        pipeline("gone", "trash", events=["s3:ObjectRemoved:*"]),  # a listing shows no deletions
    ])
    for name in ("logs-a", "logs-b", "other"):
        service.storage.ensure_bucket(name)
    scopes = {s.bucket: s.prefixes for s in watched_scopes(service)}
    assert scopes == {"inbox": ("docs/", "photos/"), "logs-a": ("",), "logs-b": ("",)}


# --- one pass -------------------------------------------------------------------------------


def test_objects_without_a_job_are_submitted_once_and_new_versions_again(local: Service) -> None:
    inbox = local.settings.buckets_dir / "inbox"
    for n in range(3):
        (inbox / f"f{n}.bin").write_bytes(b"x" * n)
        age(inbox / f"f{n}.bin")
    (inbox / "noticed.bin").write_bytes(b"had its notification")
    age(inbox / "noticed.bin")
    info = local.storage.head("inbox", "noticed.bin")
    dispatch.submit(local, ObjectEvent("inbox", "noticed.bin", size=info.size, etag=info.etag, source="watcher"))

    (first,) = reconcile_all(local)
    assert (first.listed, first.matched, first.covered, first.new_objects, first.new_versions) == (4, 4, 1, 3, 0)
    assert sorted(first.sample) == ["f0.bin", "f1.bin", "f2.bin"]
    found = local.db.list_jobs(limit=100)
    assert sorted(j.key for j in found) == ["f0.bin", "f1.bin", "f2.bin", "noticed.bin"]
    assert all(j.event["source"] == "reconcile" for j in found if j.key != "noticed.bin")

    (again,) = reconcile_all(local)
    assert (again.covered, again.submitted) == (4, 0)
    assert len(local.db.list_jobs(limit=100)) == 4

    (inbox / "f1.bin").write_bytes(b"rewritten")  # a new version: its own job
    age(inbox / "f1.bin")
    (third,) = reconcile_all(local)
    assert (third.new_objects, third.new_versions, third.sample) == (0, 1, ["f1.bin"])
    assert len(local.db.list_jobs(limit=100, key="f1.bin")) == 2


def test_failed_jobs_are_not_retried_and_recent_changes_wait(local: Service) -> None:
    inbox = local.settings.buckets_dir / "inbox"
    (inbox / "bad.bin").write_bytes(b"bad")
    age(inbox / "bad.bin")
    reconcile_all(local)
    (job,) = local.db.list_jobs()
    local.db.end_job(job.id, JobStatus.FAILED, "it failed for a reason")

    (inbox / "being-written.bin").write_bytes(b"half")  # just now: maybe still written, or notified
    (drift,) = reconcile_all(local)
    assert (drift.covered, drift.recent, drift.submitted) == (1, 1, 0)
    assert [j.status for j in local.db.list_jobs()] == ["failed"]
    assert local.db.list_jobs(key="being-written.bin") == []


def test_a_content_type_rule_decides_on_the_objects_real_type(tmp_path: Path, redis_url: str) -> None:
    service = make_service(tmp_path, [pipeline("images", "inbox", content_type=["image/*"])],
                           {"FILEPROC_BROKER_URL": redis_url})
    service.storage.put("inbox", "photo", b"not really", content_type="image/png")  # no extension
    service.storage.put("inbox", "notes.jpg", b"text", content_type="text/plain")
    (drift,) = reconcile_all(service, recent=0)  # a listing has no content type: the HEAD tells
    assert (drift.listed, drift.matched, drift.new_objects) == (2, 1, 1)
    (job,) = service.db.list_jobs()
    assert job.key == "photo" and job.event["content_type"] == "image/png"


def test_a_pipelines_own_outputs_are_not_fed_back(tmp_path: Path, redis_url: str) -> None:
    service = make_service(tmp_path, [pipeline("self", "inbox", out_bucket="{bucket}")],
                           {"FILEPROC_BROKER_URL": redis_url})
    service.storage.put("inbox", "a.bin", b"abc")
    (drift,) = reconcile_all(service, recent=0)
    assert drift.new_objects == 1
    (job,) = service.db.list_jobs()
    assert run_step(service, job.id, 0, "w").status == "succeeded"
    assert service.storage.head("inbox", "out/a.bin/size.txt").size == 1

    (again,) = reconcile_all(service, recent=0)
    assert (again.listed, again.covered, again.own_outputs, again.submitted) == (2, 1, 1, 0)
    assert len(service.db.list_jobs()) == 1


def test_drift_is_recorded_and_shown_by_the_cli(tmp_path: Path, redis_url: str) -> None:
    env = {"FILEPROC_BROKER_URL": redis_url}
    service = make_service(tmp_path, [pipeline("p", "inbox")], env)
    config = tmp_path / "fileproc.toml"
    inbox = service.settings.buckets_dir / "inbox"
    for n in range(12):
        (inbox / f"lost-{n:02}.bin").write_bytes(b"%d" % n)
        age(inbox / f"lost-{n:02}.bin")

    out = fileproc(config, "reconcile", "--once", "--json", env=env)
    (drift,) = json.loads(out.stdout)
    assert drift["bucket"] == "inbox" and drift["listed"] == 12
    assert (drift["submitted"], drift["new_objects"], drift["new_versions"]) == (12, 12, 0)
    assert len(drift["sample"]) == 12 and drift["sample"][0] == "lost-00.bin"
    assert "inbox: 12 objects had no job (notifications lost?)" in out.stderr
    assert len(jobs(config, env=env)) == 12

    quiet = fileproc(config, "reconcile", "--once", env=env).stdout
    assert "inbox: listed 12, matched 12, covered 12, 0 without a job" in quiet

    (recorded,) = json.loads(fileproc(config, "reconcile", "--history", "--json", env=env).stdout)
    assert recorded["submitted"] == 12 and recorded["sample"] == drift["sample"]
    assert [d.submitted for d in history(service.db)] == [0, 12]


def test_clean_passes_are_forgotten_after_a_day_drift_after_a_month(local: Service) -> None:
    now = datetime.now(UTC)
    for days, found in ((2, 0), (2, 3), (40, 3)):
        when = now - timedelta(days=days)
        record(local.db, Drift("inbox", [""], started_at=when, finished_at=when, listed=5, new_objects=found))
    record(local.db, Drift("inbox", [""], listed=5))
    assert [(d.submitted, round((now - d.finished_at) / timedelta(days=1))) for d in history(local.db)] == [
        (0, 0), (3, 2)]


def test_the_reconciler_thread_lists_at_start_and_again_on_its_interval(tmp_path: Path, redis_url: str) -> None:
    service = make_service(tmp_path, [pipeline("p", "inbox")], {
        "FILEPROC_BROKER_URL": redis_url, "FILEPROC_RECONCILE_MIN_INTERVAL": "0.2"})
    inbox = service.settings.buckets_dir / "inbox"
    (inbox / "early.bin").write_bytes(b"1")
    age(inbox / "early.bin")
    passes: list[Any] = []
    reconciler = Reconciler(service, on_pass=passes.append).start()
    try:
        wait_for(lambda: service.db.list_jobs(key="early.bin"), 10, "the pass at start")
        (inbox / "later.bin").write_bytes(b"2")
        age(inbox / "later.bin")
        wait_for(lambda: service.db.list_jobs(key="later.bin"), 10, "a later pass")
        # The job is committed before the pass ends and is reported: wait for the report too.
        wait_for(lambda: sum(d.submitted for d in list(passes)) == 2, 10, "the later pass's report")
    finally:
        reconciler.stop()
    assert sum(d.submitted for d in passes) == 2 and len(passes) >= 2


# --- on a real S3 store, with no notifications at all ------------------------------------------


@pytest.mark.services
def test_on_versitygw_without_a_webhook(tmp_path: Path, versitygw: Any, redis_url: str) -> None:
    gw = versitygw()
    client = Minio(gw.endpoint, gw.access_key, gw.secret_key, secure=False)
    client.make_bucket("uploads")

    def upload(key: str, data: bytes) -> None:
        client.put_object("uploads", key, io.BytesIO(data), len(data))

    for n in range(5):
        upload(f"photos/{n}.bin", b"p" * (n + 1))
    service = make_service(tmp_path, [pipeline("self", "upl*", out_bucket="{bucket}", out_key="photos/out/{key}/{name}",
                                                      prefix="photos/")], {
        "FILEPROC_BROKER_URL": redis_url, "FILEPROC_STORAGE_BACKEND": "s3",
        "FILEPROC_STORAGE_ENDPOINT": gw.endpoint, "FILEPROC_STORAGE_SECURE": "false",
        "FILEPROC_STORAGE_ACCESS_KEY": gw.access_key, "FILEPROC_STORAGE_SECRET_KEY": gw.secret_key,
    })
    upload("elsewhere/x.bin", b"not watched")

    (first,) = reconcile_all(service, recent=0)
    assert (first.bucket, first.listed, first.new_objects) == ("uploads", 5, 5)
    assert sorted(j.key for j in service.db.list_jobs()) == [f"photos/{n}.bin" for n in range(5)]
    (second,) = reconcile_all(service, recent=0)
    assert (second.covered, second.submitted) == (5, 0)

    upload("photos/2.bin", b"overwritten")  # a new etag: a new job
    (third,) = reconcile_all(service, recent=0)
    assert (third.new_versions, third.sample) == (1, ["photos/2.bin"])
    assert len(service.db.list_jobs(key="photos/2.bin")) == 2

    # A job's output lands in the watched prefix: never fed back to the pipeline that wrote it.
    (job,) = service.db.list_jobs(key="photos/0.bin")
    assert run_step(service, job.id, 0, "w").status == "succeeded"
    assert client.stat_object("uploads", "photos/out/photos/0.bin/size.txt").size == 1
    (fourth,) = reconcile_all(service, recent=0)
    assert (fourth.listed, fourth.own_outputs, fourth.submitted) == (6, 1, 0)
    assert len(service.db.list_jobs()) == 6


# --- in `fileproc serve` ------------------------------------------------------------------------


def test_serve_finds_dropped_files_by_reconciliation_alone(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path / "fileproc.toml", {
        "data_dir": str(tmp_path / "data"),
        "functions": {"paths": [str(FUNCTIONS_DIR)]},
        "api": {"port": port},
        "watcher": {"enabled": False},
        "reconcile": {"min_interval": 0.5},
        "pipelines": [pipeline("p", "inbox")],
    })
    server = Process(config, ["serve"], tmp_path / "serve.log")
    try:
        wait_healthy(port, server)
        inbox = tmp_path / "data" / "buckets" / "inbox"
        wait_for(inbox.is_dir, 10, "the inbox bucket folder", server)
        (inbox / "dropped.bin").write_bytes(b"nobody told fileproc")
        age(inbox / "dropped.bin")
        (job,) = wait_for(settled(config, 1), 60, "the dropped file's job", server)
        assert job["key"] == "dropped.bin" and job["status"] == "succeeded", job
        assert "inbox: 1 object had no job (notifications lost?)" in server.log.read_text()
    finally:
        assert server.stop() == 0, server.tail()
