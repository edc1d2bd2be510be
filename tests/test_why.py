"""``fileproc why`` / ``GET /why``: why an object was (not) processed, from what fileproc recorded.

Local storage and SQLite in a temp dir, a real Redis as the broker; steps run
in this process (``run_step``) so each case is exactly the story it tells.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fileproc import dispatch
from fileproc.app import build
from fileproc.config import load_settings
from fileproc.intake.reconcile import reconcile_all
from fileproc.objects import event_for
from fileproc.runtime.runner import run_step
from fileproc.service import Service
from fileproc.tokens import Tokens
from fileproc.web import create_app
from fileproc.why import explain
from tests.helpers import image_bytes
from tests.procs import FUNCTIONS_DIR, fileproc, write_config


@pytest.fixture
def service(tmp_path: Path, redis_url: str) -> Service:
    config = write_config(tmp_path / "fileproc.toml", {
        "data_dir": str(tmp_path / "data"),
        "broker": {"url": redis_url},
        "functions": {"paths": [str(FUNCTIONS_DIR)]},
        "pipelines": [
            {"name": "thumbs", "match": {"bucket": "uploads", "prefix": "photos/", "suffix": [".jpg", ".png"]},
             "steps": [{"function": "thumbnail", "params": {"sizes": [32]}}],
             "output": {"bucket": "derived", "key": "thumbs/{key}/{name}"}},
            {"name": "sizes", "match": {"bucket": "inbox"}, "steps": [{"function": "tiny"}],
             "output": {"bucket": "derived", "key": "sizes/{key}/{name}"}},
        ],
    })
    made = build(load_settings(config, env={}))
    made.prepare_buckets()
    return made


def upload(service: Service, bucket: str, key: str, data: bytes) -> list[int]:
    """Upload and notify, as ``fileproc put`` does; the ids of the jobs it made."""
    service.storage.put(bucket, key, data)
    event = event_for(bucket, key, service.storage.head(bucket, key), source="put")
    return [item.job.id for item in dispatch.submit(service, event)]


def verdicts(data: dict) -> dict[str, str | None]:
    return {p["name"]: p["reason"] for p in data["pipelines"]}


def test_a_processed_object_shows_its_notification_job_and_outputs(service: Service, tmp_path: Path) -> None:
    (job_id,) = upload(service, "uploads", "photos/cat.jpg", image_bytes(64, 48))
    assert run_step(service, job_id, 0, "worker-1").status == "succeeded"

    data = json.loads(fileproc(tmp_path / "fileproc.toml", "why", "--json", "uploads/photos/cat.jpg").stdout)
    assert data["object"]["size"] > 0
    (seen,) = data["notifications"]
    assert (seen["source"], seen["event"], seen["job"]) == ("put", "s3:ObjectCreated:Put", job_id)
    assert verdicts(data) == {"thumbs": None, "sizes": "match.bucket: 'uploads' is not 'inbox'"}
    (job,) = data["jobs"]
    assert (job["id"], job["status"], job["source"]) == (job_id, "succeeded", "put")
    assert [a["status"] for a in job["attempts"]] == ["succeeded"]
    assert [(o["key"], o["exists"]) for o in job["outputs"]] == [("thumbs/photos/cat.jpg/thumb-32.webp", True)]

    service.storage.delete("derived", "thumbs/photos/cat.jpg/thumb-32.webp")  # someone removed the result
    text = fileproc(tmp_path / "fileproc.toml", "why", "uploads/photos/cat.jpg").stdout
    assert f"job {job_id} thumbs succeeded" in text
    assert "output derived/thumbs/photos/cat.jpg/thumb-32.webp" in text and "MISSING from storage" in text
    assert "thumbs: matches" in text and "sizes: does not match: match.bucket" in text


def test_an_object_no_pipeline_takes_names_the_rule_that_said_no(service: Service, tmp_path: Path) -> None:
    assert upload(service, "uploads", "photos/notes.txt", b"just text") == []
    assert upload(service, "uploads", "elsewhere/dog.jpg", image_bytes(10, 10)) == []

    notes = explain(service, "uploads", "photos/notes.txt").to_dict()
    assert notes["object"]["size"] == 9 and notes["jobs"] == [] and notes["notifications"] == []
    assert verdicts(notes)["thumbs"] == "match.suffix: 'photos/notes.txt' does not end with .jpg or .png"
    dog = explain(service, "uploads", "elsewhere/dog.jpg").to_dict()
    assert verdicts(dog)["thumbs"] == "match.prefix: 'elsewhere/dog.jpg' does not start with 'photos/'"

    text = fileproc(tmp_path / "fileproc.toml", "why", "uploads/photos/notes.txt").stdout
    assert "thumbs: does not match: match.suffix: 'photos/notes.txt' does not end with .jpg or .png" in text
    assert "none (notifications no pipeline takes are counted, not recorded)" in text
    gone = explain(service, "uploads", "photos/never.jpg").to_dict()
    assert gone["object"] is None and verdicts(gone)["thumbs"] is None  # would match, if it were there


def test_an_object_whose_notification_was_lost_was_found_by_reconciliation(service: Service) -> None:
    dropped = service.settings.buckets_dir / "inbox" / "lost.bin"
    dropped.write_bytes(b"no one told fileproc")  # written behind its back: no notification at all
    then = time.time() - 60
    os.utime(dropped, (then, then))
    (drift,) = [d for d in reconcile_all(service) if d.bucket == "inbox"]
    assert drift.sample == ["lost.bin"]
    (job,) = service.db.list_jobs(bucket="inbox", key="lost.bin")
    assert run_step(service, job.id, 0, "worker-1").status == "succeeded"

    data = explain(service, "inbox", "lost.bin").to_dict()
    sources = [(n["source"], n["job"]) for n in data["notifications"]]
    assert sorted(sources, key=str) == sorted([("reconcile", job.id), ("reconcile", None)], key=str)
    assert any("notification was lost" in n["event"] for n in data["notifications"])
    (shown,) = data["jobs"]
    assert (shown["source"], shown["status"]) == ("reconcile", "succeeded")
    assert [(o["key"], o["exists"]) for o in shown["outputs"]] == [("sizes/lost.bin/size.txt", True)]


def test_a_failed_object_shows_the_reason_and_the_attempt(service: Service) -> None:
    (job_id,) = upload(service, "uploads", "photos/broken.png", b"not a PNG at all")
    assert run_step(service, job_id, 0, "worker-1").status == "failed"

    with TestClient(create_app(service, Tokens("hook", "admin"))) as client:
        assert client.get("/why", params={"bucket": "uploads", "key": "photos/broken.png"}).status_code == 401
        answer = client.get("/why", params={"bucket": "uploads", "key": "photos/broken.png"},
                            headers={"Authorization": "Bearer admin"})
    assert answer.status_code == 200
    (job,) = answer.json()["jobs"]
    assert job["status"] == "failed" and "not a readable image" in job["error"]
    (attempt,) = job["attempts"]
    assert attempt["status"] == "failed" and attempt["worker"] == "worker-1"
    assert "not a readable image" in attempt["error"] and job["outputs"] == []
