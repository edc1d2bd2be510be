"""The webhook receiver at the door: limits, bad keys, incomplete notifications, busy answers, docs.

Real parts: the app on a real SQLite database and local storage (in-process
through Starlette's TestClient); a locked database is a real SQLite lock
held by another connection.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fileproc.app import build
from fileproc.config import load_settings
from fileproc.intake.webhook import Committer
from fileproc.service import Service
from fileproc.tokens import Tokens
from fileproc.web import create_app
from tests.procs import wait_for, write_config

WEBHOOK = "test-webhook-token"
ADMIN = "test-admin-token"
EVENTS = f"/events?token={WEBHOOK}"


def make_service(tmp_path: Path, match: dict[str, Any] | None = None, **api: Any) -> Service:
    config = write_config(tmp_path / "fileproc.toml", {
        "data_dir": str(tmp_path / "data"),
        # Nothing listens here: sends fail fast and stay due in the outbox (not what these tests look at).
        "broker": {"url": "redis://127.0.0.1:9/0"},
        "api": {"webhook_token": WEBHOOK, "admin_token": ADMIN, **api},
        "pipelines": [{"name": "thumbnails",
                       "match": match or {"bucket": "uploads", "suffix": [".jpg"], "min_size": 10},
                       "steps": [{"function": "thumbnail"}],
                       "output": {"bucket": "derived", "key": "thumbnails/{key}/{name}"}}],
    })
    service = build(load_settings(config, env={}))
    service.prepare_buckets()
    return service


@pytest.fixture
def service(tmp_path: Path) -> Service:
    return make_service(tmp_path)


@pytest.fixture
def client(service: Service) -> Iterator[TestClient]:
    with TestClient(create_app(service, Tokens(WEBHOOK, ADMIN))) as test_client:
        yield test_client


def record(key: str, **obj: Any) -> dict[str, Any]:
    return {"eventName": "ObjectCreated:Put", "eventTime": "2026-11-27T10:00:00.000Z",
            "s3": {"bucket": {"name": "uploads"}, "object": {"key": key, "size": 1234, "eTag": "abc123", **obj}}}


def body(*records: dict[str, Any]) -> bytes:
    return json.dumps({"Records": list(records)}).encode()


def job_count(service: Service) -> int:
    return sum(service.db.count_jobs().values())


# -- limits --------------------------------------------------------------------------


def test_a_body_over_the_size_limit_is_refused_before_it_is_read(service: Service, client: TestClient) -> None:
    big = body(*(record(f"photo-{i:06}.jpg") for i in range(20_000)))
    assert len(big) > service.settings.api.max_body_bytes
    answer = client.post(EVENTS, content=big, headers={"content-type": "application/json"})
    assert answer.status_code == 413
    assert "api.max_body_bytes" in answer.json()["error"]
    assert job_count(service) == 0


def test_a_chunked_body_is_counted_while_it_is_read(service: Service, client: TestClient) -> None:
    big = body(*(record(f"photo-{i:06}.jpg") for i in range(20_000)))
    chunks = (big[i:i + 65536] for i in range(0, len(big), 65536))  # no Content-Length: chunked
    answer = client.post(EVENTS, content=chunks)
    assert answer.status_code == 413
    assert job_count(service) == 0


def test_too_many_records_is_refused_and_none_recorded(tmp_path: Path) -> None:
    service = make_service(tmp_path, max_records=5)
    with TestClient(create_app(service, Tokens(WEBHOOK, ADMIN))) as client:
        answer = client.post(EVENTS, content=body(*(record(f"p{i}.jpg") for i in range(6))))
        assert answer.status_code == 413
        assert "at most 5" in answer.json()["error"]
        assert job_count(service) == 0
        assert client.post(EVENTS, content=body(*(record(f"p{i}.jpg") for i in range(5)))).status_code == 200
    assert job_count(service) == 5


def test_bad_keys_are_refused_with_reasons_and_the_rest_recorded(service: Service, client: TestClient) -> None:
    answer = client.post(EVENTS + "&keys=raw", content=body(
        record("good.jpg"), record("a/../etc/passwd.jpg"), record("./x.jpg"), record("nul\0.jpg"),
        record("k" * 1021 + ".jpg"),
    ))
    assert answer.status_code == 200, answer.text
    reasons = answer.json()["rejected"]
    assert [r.split(":")[0] for r in reasons] == ["Records[1]", "Records[2]", "Records[3]", "Records[4]"]
    assert "'..' segment" in reasons[0] and "'..' segment" in reasons[1]
    assert "NUL" in reasons[2] and "longer than 1024 bytes" in reasons[3]
    assert len(answer.json()["jobs"]) == 1 and job_count(service) == 1


def test_a_body_of_bad_keys_only_is_answered_not_retried(service: Service, client: TestClient) -> None:
    # A 2xx: a retrying store must not send it again and again; the reasons are in the answer.
    answer = client.post(EVENTS, content=body(record("a/%2E%2E/b.jpg")))
    assert answer.status_code == 200
    assert answer.json()["jobs"] == [] and len(answer.json()["rejected"]) == 1


# -- docs ----------------------------------------------------------------------------


def test_the_schema_needs_the_admin_token_in_the_header(client: TestClient) -> None:
    assert client.get("/openapi.json").status_code == 401
    assert client.get("/openapi.json", headers={"authorization": f"Bearer {WEBHOOK}"}).status_code == 401
    assert client.get("/openapi.json", headers={"authorization": f"Bearer {ADMIN}"}).status_code == 200
    assert client.get(f"/openapi.json?token={ADMIN}").status_code == 401  # a URL ends up in proxies' logs


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_the_docs_pages_are_the_dashboards_and_fetch_the_schema_with_its_session(client: TestClient,
                                                                                  path: str) -> None:
    answer = client.get(path, follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == f"/ui{path}"
    assert client.get(f"/ui{path}", follow_redirects=False).headers["location"].startswith("/ui/login")
    assert client.get("/ui/openapi.json").status_code == 401
    assert client.post("/ui/login", data={"token": ADMIN}).status_code == 200
    page = client.get(path).text
    assert "/ui/openapi.json" in page and ADMIN not in page
    assert "/jobs" in client.get("/ui/openapi.json").json()["paths"]


# -- incomplete notifications --------------------------------------------------------


def test_a_notification_without_an_etag_is_deduplicated_against_the_same_object(
        service: Service, client: TestClient) -> None:
    info = service.storage.put("uploads", "cat.jpg", b"\xff\xd8" + b"x" * 500)
    with_etag = record("cat.jpg", eTag=info.etag, size=info.size)
    without_etag = record("cat.jpg", size=info.size)
    del without_etag["s3"]["object"]["eTag"]
    first = client.post(EVENTS, content=body(with_etag)).json()["jobs"]
    second = client.post(EVENTS, content=body(without_etag)).json()["jobs"]
    assert first == second and len(first) == 1
    assert job_count(service) == 1


def test_a_size_of_zero_is_filled_in_from_the_object(service: Service, client: TestClient) -> None:
    # versitygw sends size 0 for multipart and copy events; the pipeline wants at least 10 bytes.
    info = service.storage.put("uploads", "big.jpg", b"\xff\xd8" + b"x" * 500)
    answer = client.post(EVENTS, content=body(record("big.jpg", size=0, eTag=info.etag)))
    (job_id,) = answer.json()["jobs"]
    job = service.db.get_job(job_id)
    assert job is not None and job.event["size"] == info.size


def test_an_object_gone_before_its_head_is_dropped(service: Service, client: TestClient) -> None:
    answer = client.post(EVENTS, content=body(record("gone.jpg", size=0)))
    assert answer.status_code == 200 and answer.json()["jobs"] == []
    stats = client.get("/stats", headers={"authorization": f"Bearer {ADMIN}"}).json()
    assert stats["dropped"] == 1 and job_count(service) == 0


def test_unmatched_events_are_counted_not_written(service: Service, client: TestClient) -> None:
    other = record("notes.txt")
    answer = client.post(EVENTS, content=body(other, other, record("x.jpg")))
    assert len(answer.json()["jobs"]) == 1
    stats = client.get("/stats", headers={"authorization": f"Bearer {ADMIN}"}).json()
    assert (stats["received"], stats["unmatched"], stats["recorded"]) == (3, 2, 1)
    assert client.get("/stats").status_code == 401


# -- busy ----------------------------------------------------------------------------


def test_a_locked_database_answers_503_with_retry_after(service: Service) -> None:
    committer = Committer(service, answer_timeout=0.5, max_backlog=1)
    app = create_app(service, Tokens(WEBHOOK, ADMIN), committer=committer)
    database = Path(service.settings.database_url.removeprefix("sqlite:///"))
    service.db.check()  # the database file exists before another connection locks it
    with TestClient(app) as client:
        locker = sqlite3.connect(database, isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")  # another writer holds the database
        try:
            answer = client.post(EVENTS, content=body(record("a.jpg")))
            assert answer.status_code == 503
            assert answer.headers["retry-after"] == "1"
            # The first request's events still wait for the lock: the backlog is full.
            answer = client.post(EVENTS, content=body(record("b.jpg")))
            assert answer.status_code == 503 and "waiting to be recorded" in answer.json()["error"]
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        # The sender retries until answered: recorded once (the first attempt's events were
        # committed as soon as the lock went, so the retry finds their job).
        wait_for(lambda: client.post(EVENTS, content=body(record("a.jpg"))).status_code == 200, 30, "a 200")
    assert job_count(service) == 1
