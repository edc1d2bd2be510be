"""``GET /metrics``: parsed with prometheus-client's own parser, its counts checked against the jobs recorded."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, func, select, text, update

from fileproc import dispatch
from fileproc.app import build
from fileproc.config import load_settings
from fileproc.intake.webhook import Counters
from fileproc.metrics import RECEIVER, Metrics
from fileproc.objects import event_for
from fileproc.runtime.runner import run_step
from fileproc.service import Service
from fileproc.state import StepEnd, StepStart
from fileproc.state.metrictotals import MetricMarkRow, MetricTotalRow
from fileproc.state.models import AttemptRow, JobRow, utcnow
from tests.helpers import image_bytes, local_service
from tests.procs import Process, jobs, settled, wait_for, wait_healthy, write_config
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
        # Before any notification every receiver counter is there, at zero (a rate over it needs the series).
        before = scrape(port, "admin")
        assert all(before[(name, ())] == 0 for name, _ in RECEIVER.values()), before
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


TINY = {"name": "p", "match": {"bucket": "inbox"}, "steps": [{"function": "tiny"}], "output": {"bucket": "out"}}


def test_an_attempt_is_counted_once_when_it_ends_even_after_later_ones(tmp_path: Path, redis_url: str) -> None:
    service = local_service(tmp_path, [TINY], broker={"url": redis_url})
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
    service = local_service(tmp_path, [TINY], broker={"url": redis_url})
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


# -- a scrape's cost does not grow with history: totals rolled up once, then only what is new --------------


def _history(tmp_path: Path, database: str = "") -> Path:
    return write_config(tmp_path / "fileproc.toml", {
        "data_dir": str(tmp_path / "data"), "broker": {"url": "redis://127.0.0.1:9/0"},
        "database": {"url": database},
        "pipelines": [{"name": "p", "match": {"bucket": "uploads"}, "steps": [{"function": "thumbnail"}],
                       "output": {"bucket": "derived"}}]})


def _add(service: Service, count: int, *, ago: float = 60, status: str = "succeeded") -> list[int]:
    """``count`` jobs with one attempt each, started ``ago`` seconds ago; the attempts' ids."""
    started = utcnow() - timedelta(seconds=ago)
    with service.db.session() as s:
        first = s.scalar(select(func.count()).select_from(JobRow))
        attempts = []
        for n in range(first, first + count):
            job = JobRow(pipeline="p", bucket="uploads", key=f"{n}.jpg", version=f"v{n}", status=status,
                         event={"time": (started - timedelta(seconds=2)).isoformat()}, created_at=started)
            attempt = AttemptRow(job=job, step_index=0, function="thumbnail", status=status, started_at=started,
                                 finished_at=None if status == "running" else started + timedelta(seconds=1),
                                 duration_ms=None if status == "running" else 100 + n, peak_memory_kb=50_000,
                                 cold_start=n % 3 == 0)
            s.add_all([job, attempt])
            attempts.append(attempt)
    return [a.id for a in attempts]


def _samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(metrics.render().decode()) for s in f.samples}


def _attempts(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> float:
    return sum(v for (name, _), v in samples.items() if name == "fileproc_attempts_total")


def test_a_scrape_counts_exactly_what_is_new_in_every_process_and_after_a_restart(tmp_path: Path) -> None:
    config = _history(tmp_path)
    service, other = build(load_settings(config, env={})), build(load_settings(config, env={}))
    _add(service, 120)
    (running,) = _add(service, 1, status="running")  # settled, but still running when the mark passes it
    _add(service, 3, ago=0)  # not settled yet: counted afresh on each scrape
    one, two = Metrics(service, Counters()), Metrics(other, Counters())  # two API processes
    thumbnail = (("function", "thumbnail"),)

    first = _samples(one)
    assert _attempts(first) == 123
    assert first[("fileproc_jobs_created_total", (("pipeline", "p"),))] == 124
    assert first[("fileproc_jobs", (("pipeline", "p"), ("status", "running")))] == 1
    assert first[("fileproc_step_duration_seconds_count", thumbnail)] == 123
    with service.db.reading() as s:  # the history is in the totals now: a few rows, however long it is
        assert s.scalar(select(MetricMarkRow.after).where(MetricMarkRow.name == "attempts")) >= running
        assert s.scalar(select(func.count()).select_from(MetricTotalRow)) < 60

    _add(service, 10)
    _add(service, 7, ago=0)
    for metrics in (two, one, two):  # whichever process is scraped, and however often: 17 more
        samples = _samples(metrics)
        assert _attempts(samples) == 140
        assert samples[("fileproc_step_duration_seconds_count", thumbnail)] == 140
        assert samples[("fileproc_jobs_created_total", (("pipeline", "p"),))] == 141

    with service.db.session() as s:  # the attempt that was running ends
        s.execute(update(AttemptRow).where(AttemptRow.id == running)
                  .values(status="failed", finished_at=utcnow(), duration_ms=5000))
    assert _attempts(_samples(one)) == _attempts(_samples(two)) == 141
    restarted = _samples(Metrics(build(load_settings(config, env={})), Counters()))
    assert _attempts(restarted) == 141
    assert restarted[("fileproc_attempts_total", (("function", "thumbnail"), ("status", "failed")))] == 1
    with service.db.reading() as s:
        durations = s.scalars(select(AttemptRow.duration_ms)).all()
    assert restarted[("fileproc_step_duration_seconds_sum", thumbnail)] == pytest.approx(sum(durations) / 1000)
    assert restarted[("fileproc_cold_starts_total", thumbnail)] + restarted[
        ("fileproc_warm_starts_total", thumbnail)] == 141

    # Ids a PostgreSQL sequence gave to inserts that did nothing (duplicates) leave a gap: counted past it.
    far = 3 * one.state.JOB_BATCH
    with service.db.session() as s:
        s.execute(update(JobRow).values(created_at=utcnow() - timedelta(minutes=1)))  # all settled now
        last = s.scalar(select(func.max(JobRow.id)))
        s.add(JobRow(id=last + far, pipeline="p", bucket="uploads", key="far.jpg", version="v",
                     event={}, created_at=utcnow() - timedelta(minutes=1)))
    for _ in range(2):  # (the first scrape counts up to the gap, the next past it)
        assert _samples(one)[("fileproc_jobs_created_total", (("pipeline", "p"),))] == 142
    with service.db.reading() as s:
        assert s.scalar(select(MetricMarkRow.after).where(MetricMarkRow.name == "jobs")) == last + far


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_a_history_without_totals_is_caught_up_a_part_per_scrape_and_never_counted_twice(
        tmp_path: Path, engine: str, request: pytest.FixtureRequest) -> None:
    database = ""
    if engine == "postgresql":  # a database of its own: the server is shared by the session's tests
        server = request.getfixturevalue("postgres_url")
        name = f"metrics_{tmp_path.name.lower().replace('-', '_')}"[:60]
        with create_engine(server, isolation_level="AUTOCOMMIT").connect() as admin:
            admin.execute(text(f"CREATE DATABASE {name}"))
        database = server.rsplit("/", 1)[0] + "/" + name
    config = _history(tmp_path, database)
    service = build(load_settings(config, env={}))
    _add(service, 200)
    processes = [Metrics(build(load_settings(config, env={})), Counters()) for _ in range(2)]
    for metrics in processes:  # a part a scrape, as a long history is: 10 attempts
        metrics.state.BATCH, metrics.state.BUDGET = 10, 0.0
    shown: list[list[float]] = [[], []]

    def scrape_until_caught_up(n: int) -> None:
        while not shown[n] or shown[n][-1] < 200:
            shown[n].append(_attempts(_samples(processes[n])))

    threads = [threading.Thread(target=scrape_until_caught_up, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for counts in shown:  # rising while catching up, in both processes at once, to exactly the history
        assert len(counts) >= 2 and counts == sorted(counts) and counts[-1] == 200
    # (a part a scrape: twenty parts, so twenty scrapes at least between them; how many each made depends on
    # how the threads were run)
    assert sum(len(counts) for counts in shown) >= 20, shown
    with service.db.reading() as s:
        assert s.scalar(select(func.sum(MetricTotalRow.value)).where(MetricTotalRow.kind == "attempts")) == 200
    _add(service, 4, ago=0)
    assert [_attempts(_samples(metrics)) for metrics in processes] == [204, 204]
