"""``GET /metrics``: parsed with prometheus-client's own parser, its counts checked against the jobs recorded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fileproc import dispatch
from fileproc.config import load_settings
from fileproc.intake.objects import event_for
from fileproc.intake.webhook import Counters
from fileproc.metrics import Metrics
from fileproc.runtime.runner import run_step
from fileproc.service import Service
from fileproc.state import StepEnd, StepStart
from fileproc.state.models import AttemptRow, utcnow
from tests.helpers import image_bytes
from tests.procs import FUNCTIONS_DIR, Process, jobs, settled, wait_for, wait_healthy, write_config
from tests.servers import free_port


def scrape(port: int, token: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics``, by (sample name, sorted labels)."""
    answer = httpx.get(f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(answer.text) for s in family.samples}


def notification(*keys: str) -> bytes:
    return json.dumps({"Records": [
        {"eventName": "s3:ObjectCreated:Put", "s3": {"bucket": {"name": "uploads"},
                                                      "object": {"key": key, "size": 10, "eTag": "e" + str(n)}}}
        for n, key in enumerate(keys)]}).encode()


def test_metrics_after_a_burst_of_uploads_agree_with_the_jobs(tmp_path: Path) -> None:
    port = free_port()
    server = Process(None, ["serve", "--port", str(port)], tmp_path / "serve.log", cwd=tmp_path,
                     env={"FILEPROC_METRICS_TOKEN": "prometheus-token", "FILEPROC_WATCHER_SETTLE_SECONDS": "0.2"})
    try:
        wait_healthy(port, server)
        data = tmp_path / "fileproc-data"
        uploads = data / "buckets" / "uploads"
        wait_for(uploads.is_dir, 10, "the uploads bucket folder", server)
        tokens = json.loads((data / "tokens.json").read_text())

        for n in range(6):  # the burst: six photos and one that is not an image at all
            (uploads / f"photo-{n}.jpg").write_bytes(image_bytes(120 + n, 80, "teal"))
        (uploads / "broken.jpg").write_bytes(b"this is not a JPEG")
        # Through the webhook: one record no pipeline takes, one with a key no store may hold.
        answer = httpx.post(f"http://127.0.0.1:{port}/events?token={tokens['webhook']}", timeout=10,
                            content=notification("notes.txt", "a/../escape.jpg"))
        assert answer.status_code == 200 and len(answer.json()["rejected"]) == 1

        found = wait_for(settled(None, 7, cwd=tmp_path), 90, "7 finished jobs", server)
        statuses = sorted(j["status"] for j in found)
        assert statuses == ["failed"] + ["succeeded"] * 6, found
        attempts = [a for j in found for a in j["attempts"]]

        metrics = scrape(port, "prometheus-token")
        pipeline = (("pipeline", "thumbnails"),)
        assert metrics[("fileproc_jobs_created_total", pipeline)] == 7
        for status in ("succeeded", "failed", "queued", "running", "skipped"):
            assert metrics[("fileproc_jobs", (("pipeline", "thumbnails"), ("status", status)))] == statuses.count(
                status)
        by_status: dict[str, int] = {}
        for attempt in attempts:
            by_status[attempt["status"]] = by_status.get(attempt["status"], 0) + 1
        for status, count in by_status.items():
            assert metrics[("fileproc_attempts_total", (("function", "thumbnail"), ("status", status)))] == count
        thumbnail = (("function", "thumbnail"),)
        assert metrics[("fileproc_step_duration_seconds_count", thumbnail)] == len(attempts)
        assert metrics[("fileproc_step_duration_seconds_sum", thumbnail)] == pytest.approx(sum(
            a["duration_ms"] for a in attempts) / 1000)
        assert metrics[("fileproc_step_peak_memory_bytes_count", thumbnail)] == len(attempts)
        assert metrics[("fileproc_event_age_seconds_count", thumbnail)] == len(attempts)
        cold = sum(1 for a in attempts if a["cold_start"])
        assert metrics[("fileproc_cold_starts_total", thumbnail)] == cold
        assert metrics.get(("fileproc_warm_starts_total", thumbnail), 0) == len(attempts) - cold
        assert metrics[("fileproc_queue_depth", (("queue", "thumbnail"),))] == 0
        assert metrics[("fileproc_queue_oldest_seconds", (("queue", "thumbnail"),))] == 0
        # The receiver's counters: only what came through POST /events (the dropped files did not).
        assert metrics[("fileproc_notifications_received_total", ())] == 2
        assert metrics[("fileproc_notifications_unmatched_total", ())] == 1
        assert metrics[("fileproc_notifications_rejected_total", ())] == 1
        assert metrics[("fileproc_notifications_recorded_total", ())] == 0
        # Reconciliation listed the bucket at start (empty then): a pass, no drift.
        assert metrics[("fileproc_reconcile_drift_objects", (("bucket", "uploads"),))] == 0

        # A second scrape counts each finished attempt once, not again.
        assert scrape(port, tokens["admin"])[("fileproc_step_duration_seconds_count", thumbnail)] == len(attempts)
        assert httpx.get(f"http://127.0.0.1:{port}/metrics").status_code == 401
        for token in ("wrong", tokens["webhook"]):
            refused = httpx.get(f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {token}"})
            assert refused.status_code == 401
    finally:
        server.stop()


def test_several_api_processes_answer_the_same_totals(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path / "fileproc.toml", {
        "data_dir": str(tmp_path / "data"),
        "broker": {"url": "redis://127.0.0.1:9/0"},  # nothing listens: the jobs wait in the outbox
        "api": {"webhook_token": "hook", "admin_token": "admin"},
        "pipelines": [{"name": "p", "match": {"bucket": "uploads", "suffix": [".jpg"]},
                       "steps": [{"function": "thumbnail"}], "output": {"bucket": "derived"}}],
    })
    api = Process(config, ["api", "--port", str(port), "--workers", "2"], tmp_path / "api.log")
    try:
        wait_healthy(port, api)
        sent = 0
        for n in range(40):  # a new connection each: the two processes share them
            with httpx.Client() as client:
                answer = client.post(f"http://127.0.0.1:{port}/events?token=hook",
                                     content=notification(f"photo-{n}.jpg", f"notes-{n}.txt"))
            assert answer.status_code == 200, answer.text
            sent += 2
        for _ in range(6):  # whichever process answers, the same totals
            metrics: dict[Any, float] = scrape(port, "admin")
            assert metrics[("fileproc_notifications_received_total", ())] == sent
            assert metrics[("fileproc_notifications_unmatched_total", ())] == sent / 2
            assert metrics[("fileproc_notifications_recorded_total", ())] == sent / 2
            assert metrics[("fileproc_jobs", (("pipeline", "p"), ("status", "queued")))] == sent / 2
            assert metrics[("fileproc_queue_depth", (("queue", "thumbnail"),))] == sent / 2
            assert metrics[("fileproc_queue_oldest_seconds", (("queue", "thumbnail"),))] > 0
        assert len(jobs(config)) == sent / 2
    finally:
        api.stop()


def test_an_attempt_is_counted_once_when_it_ends_even_after_later_ones(tmp_path: Path, redis_url: str) -> None:
    config = write_config(tmp_path / "fileproc.toml", {
        "data_dir": str(tmp_path / "data"), "broker": {"url": redis_url},
        "functions": {"paths": [str(FUNCTIONS_DIR)]},
        "pipelines": [{"name": "p", "match": {"bucket": "inbox"}, "steps": [{"function": "tiny"}],
                       "output": {"bucket": "out"}}]})
    service = Service(load_settings(config, env={}))
    service.prepare_buckets()
    ids = []
    for key in ("long.bin", "short.bin"):
        service.storage.put("inbox", key, b"data")
        event = event_for("inbox", key, service.storage.head("inbox", key), source="put")
        ids += [d.job.id for d in dispatch.submit(service, event)]
    long_step = service.db.start_step(ids[0], 0, "w1", 30, service.function_name)  # runs across scrapes
    assert isinstance(long_step, StepStart)
    assert run_step(service, ids[1], 0, "w2").status == "succeeded"  # a later attempt ends first
    metrics = Metrics(service, Counters())

    def counted() -> tuple[float, float]:
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for f in text_string_to_metric_families(metrics.render().decode()) for s in f.samples}
        return (samples[("fileproc_step_duration_seconds_count", (("function", "tiny"),))],
                samples[("fileproc_jobs", (("pipeline", "p"), ("status", "running")))])

    assert counted() == (1, 1)
    service.db.finish_step(StepEnd(job_id=ids[0], step_index=0, attempt_id=long_step.attempt_id,
                                   attempt_status="succeeded", outcome="succeeded", duration_ms=40_000))
    assert counted() == (2, 0)
    assert counted() == (2, 0)  # each attempt once, however often Prometheus scrapes


def test_an_attempt_committed_after_a_later_id_is_still_counted(tmp_path: Path, redis_url: str) -> None:
    # On PostgreSQL a smaller id can commit after a larger one (ids are taken before commit):
    # a scrape in between must not move past the smaller id for good.
    config = write_config(tmp_path / "fileproc.toml", {
        "data_dir": str(tmp_path / "data"), "broker": {"url": redis_url},
        "functions": {"paths": [str(FUNCTIONS_DIR)]},
        "pipelines": [{"name": "p", "match": {"bucket": "inbox"}, "steps": [{"function": "tiny"}],
                       "output": {"bucket": "out"}}]})
    service = Service(load_settings(config, env={}))
    service.storage.ensure_bucket("inbox")
    service.storage.put("inbox", "a.bin", b"data")
    (job,) = [d.job for d in dispatch.submit(service, event_for("inbox", "a.bin", service.storage.head(
        "inbox", "a.bin"), source="put"), send=False)]
    metrics = Metrics(service, Counters())

    def add_attempt(attempt_id: int) -> None:
        with service.db.session() as s:
            s.add(AttemptRow(id=attempt_id, job_id=job.id, step_index=0, function="tiny", status="failed",
                             started_at=utcnow(), finished_at=utcnow(), duration_ms=5, peak_memory_kb=1000))

    def count() -> float:
        return next(s.value for f in text_string_to_metric_families(metrics.render().decode()) for s in f.samples
                    if s.name == "fileproc_attempts_total")

    add_attempt(10)
    assert count() == 1
    add_attempt(5)  # the smaller id, committed later
    assert count() == 2
    assert count() == 2
