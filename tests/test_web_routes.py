"""Each route on its own: the web routers' functions called directly, and the one retry-all path.

Real parts: SQLite and local storage in a temp dir (the service of
tests/test_api.py); a dashboard page gets a request made by hand, with a
session its app issued. No server, no client, except where the test is that
the API, the dashboard and the CLI all retry through
:func:`fileproc.dispatch.retry_failed`.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi import HTTPException, Request
from fastapi.testclient import TestClient

from fileproc import dispatch
from fileproc.cli import cli
from fileproc.events import ObjectEvent
from fileproc.runtime import outbox
from fileproc.service import Service
from fileproc.state import JobStatus
from fileproc.tokens import Tokens
from fileproc.web import admin, create_app
from fileproc.web.functions import InvokeRequest, target
from fileproc.web.ui import jobs as ui_jobs
from fileproc.web.ui import pages as ui_pages
from fileproc.web.ui.session import COOKIE, LoginNeeded
from tests.test_api import ADMIN, WEBHOOK, make_service

AS_ADMIN = {"authorization": f"Bearer {ADMIN}"}


@pytest.fixture
def service(tmp_path: Path) -> Service:
    return make_service(tmp_path)


@pytest.fixture
def relays(monkeypatch: pytest.MonkeyPatch) -> list[Service]:
    """Each relay pass a request or command makes (the real one: sends fail fast, the steps stay due).

    Not the app's own relay thread's, which passes every ``runtime.relay_interval`` seconds.
    """
    passes: list[Service] = []
    real = outbox.relay

    def counted(service: Service) -> int:
        if threading.current_thread().name != "fileproc-relay":
            passes.append(service)
        return real(service)

    monkeypatch.setattr(outbox, "relay", counted)
    return passes


def a_job(service: Service, key: str, status: JobStatus | None = JobStatus.FAILED) -> int:
    job = dispatch.submit(service, ObjectEvent("uploads", key, size=100, etag=f"e-{key}"), send=False)[0].job
    if status is not None:
        service.db.end_job(job.id, status, "broken on purpose" if status == JobStatus.FAILED else None)
    return job.id


def status_of(service: Service, job_id: int) -> str:
    found = service.db.get_job(job_id)
    assert found is not None
    return str(found.status)


# -- dispatch.retry_failed -------------------------------------------------------------


def test_every_failed_job_is_queued_again_with_one_relay_pass(service: Service, relays: list[Service]) -> None:
    failed = [a_job(service, f"f{n}.jpg") for n in range(3)]
    done = a_job(service, "ok.jpg", JobStatus.SUCCEEDED)
    retried = dispatch.retry_failed(service)
    assert [job.id for job in retried] == failed
    assert all(job.status == JobStatus.QUEUED for job in retried)
    assert [status_of(service, n) for n in failed] == ["queued"] * 3 and status_of(service, done) == "succeeded"
    assert len(relays) == 1


def test_only_the_jobs_named_are_retried_and_nothing_to_retry_sends_nothing(service: Service,
                                                                             relays: list[Service]) -> None:
    first, second = a_job(service, "a.jpg"), a_job(service, "b.jpg")
    done = a_job(service, "ok.jpg", JobStatus.SUCCEEDED)
    assert [job.id for job in dispatch.retry_failed(service, [second, 999_999])] == [second]
    assert (status_of(service, first), status_of(service, second)) == ("failed", "queued")
    assert len(relays) == 1
    assert [job.status for job in dispatch.retry_failed(service, [done])] == [JobStatus.SUCCEEDED]
    assert dispatch.retry_failed(service, []) == []
    assert len(relays) == 1  # a finished job is left as it is: nothing to send


@pytest.fixture
def client(service: Service) -> Iterator[TestClient]:
    with TestClient(create_app(service, Tokens(WEBHOOK, ADMIN)), follow_redirects=False) as test_client:
        yield test_client


def test_the_api_the_dashboard_and_the_cli_retry_all_in_one_pass(tmp_path: Path, service: Service,
                                                                  client: TestClient, relays: list[Service]) -> None:
    ids = [a_job(service, f"f{n}.jpg") for n in range(3)]
    assert client.post("/jobs/retry-failed", headers=AS_ADMIN).json() == {"retried": ids}
    assert len(relays) == 1
    for job_id in ids:
        service.db.end_job(job_id, JobStatus.FAILED, "broken again")
    assert client.post("/ui/login", data={"token": ADMIN}).status_code == 303
    found = re.search(r'name="csrf" value="([^"]+)"', client.get("/ui/jobs").text)
    assert found
    answer = client.post("/ui/jobs/retry-failed", data={"csrf": found.group(1)})
    assert answer.headers["location"] == "/ui/jobs?retried=3" and len(relays) == 2
    for job_id in ids:
        service.db.end_job(job_id, JobStatus.FAILED, "broken again")
    printed = CliRunner().invoke(cli, ["--config", str(tmp_path / "fileproc.toml"), "retry", "--failed"],
                                 catch_exceptions=False).output
    assert printed.splitlines() == [f"job {n}: queued" for n in ids]
    assert all(status_of(service, n) == "queued" for n in ids) and len(relays) == 3


# -- the admin routes, called as functions ----------------------------------------------


def test_admin_routes_answer_with_plain_data(service: Service, relays: list[Service]) -> None:
    job_id = a_job(service, "a.jpg")
    assert [job["id"] for job in admin.jobs(service, status="failed")] == [job_id]
    assert admin.job(service, job_id)["status"] == "failed"
    with pytest.raises(HTTPException) as refused:
        admin.job(service, 999_999)
    assert refused.value.status_code == 404
    with pytest.raises(HTTPException) as refused:
        admin.jobs(service, status="lost")
    assert refused.value.status_code == 400
    assert admin.retry_failed(service) == {"retried": [job_id]}
    assert admin.retry(service, job_id) == {"id": job_id, "status": "queued"}
    assert admin.healthz(service) == {"status": "ok"}


def test_an_invocation_names_its_object_by_bucket_and_key_or_by_an_s3_event() -> None:
    event = {"Records": [{"s3": {"bucket": {"name": "inbox"}, "object": {"key": "my+file.txt"}}}]}
    assert target(InvokeRequest(event=event)) == ("inbox", "my file.txt")
    assert target(InvokeRequest(bucket="inbox", key="a.txt")) == ("inbox", "a.txt")
    for wrong in (InvokeRequest(bucket="inbox"), InvokeRequest(event={"Records": []})):
        with pytest.raises(HTTPException) as refused:
            target(wrong)
        assert refused.value.status_code == 400


# -- the dashboard's pages, called as functions ------------------------------------------


def page_request(app: Any, path: str, cookie: str | None) -> Request:
    headers = [(b"cookie", f"{COOKIE}={cookie}".encode())] if cookie else []
    return Request({"type": "http", "app": app, "method": "GET", "path": path, "raw_path": path.encode(),
                    "query_string": b"", "headers": headers, "scheme": "http", "server": ("test", 80),
                    "root_path": ""})


def test_a_job_page_is_rendered_for_a_session_and_none_without(service: Service) -> None:
    app = create_app(service, Tokens(WEBHOOK, ADMIN))
    job_id = a_job(service, "a.jpg")
    session = app.state.ui_sessions.issue()
    answer = ui_jobs.job(page_request(app, f"/ui/jobs/{job_id}", session), service, job_id)
    assert answer.status_code == 200 and b"broken on purpose" in answer.body
    assert "default-src 'none'" in answer.headers["content-security-policy"]
    assert ui_jobs.job(page_request(app, "/ui/jobs/999999", session), service, 999_999).status_code == 404
    with pytest.raises(LoginNeeded):
        ui_jobs.job(page_request(app, f"/ui/jobs/{job_id}", None), service, job_id)


def test_a_jobs_steps_say_which_is_done_current_and_later(service: Service) -> None:
    job_id = a_job(service, "a.jpg", status=None)
    found = service.db.get_job(job_id)
    assert found is not None
    assert [step["state"] for step in ui_jobs.steps(service, found)] == ["current"]


def test_a_key_is_tested_against_each_pipeline_with_its_output(service: Service) -> None:
    probe = ObjectEvent("uploads", "pets/cat.jpg", event_name="s3:ObjectCreated:Put", size=100)
    (verdict,) = ui_pages.tested_against(list(service.pipelines.values()), probe)
    assert verdict["reason"] is None and verdict["output"] == "derived/thumbnails/pets/cat.jpg/NAME"
    (verdict,) = ui_pages.tested_against(list(service.pipelines.values()),
                                         ObjectEvent("uploads", "notes.txt", size=100))
    assert "match.suffix" in verdict["reason"]
