"""The dashboard's door: the login, its cookie, CSRF on every POST, and pages only for a session.

Real parts: the app on SQLite and local storage, in-process (Starlette's
TestClient); jobs made through dispatch like any upload's. The browser tests
(tests/test_ui_browser.py) drive the pages themselves.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from fileproc import dispatch
from fileproc.events import ObjectEvent
from fileproc.service import Service
from fileproc.state import JobStatus
from fileproc.tokens import Tokens
from fileproc.web import create_app
from tests.test_api import ADMIN, WEBHOOK, make_service


@pytest.fixture
def service(tmp_path) -> Service:
    return make_service(tmp_path)


@pytest.fixture
def client(service: Service) -> Iterator[TestClient]:
    with TestClient(create_app(service, Tokens(WEBHOOK, ADMIN)), follow_redirects=False) as test_client:
        yield test_client


def log_in(client: TestClient) -> str:
    """Logs in; returns the CSRF token the pages' forms carry."""
    assert client.post("/ui/login", data={"token": ADMIN, "next": "/ui/jobs"}).status_code == 303
    found = re.search(r'name="csrf" value="([^"]+)"', client.get("/ui/jobs").text)
    assert found
    return found.group(1)


def failed_job(service: Service) -> int:
    job = dispatch.submit(service, ObjectEvent("uploads", "a.jpg", size=100, etag="e1"), send=False)[0].job
    service.db.end_job(job.id, JobStatus.FAILED, "broken on purpose")
    return job.id


def test_pages_need_a_session_and_send_you_to_log_in(client: TestClient) -> None:
    answer = client.get("/ui/jobs?status=failed")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/ui/login?next=%2Fui%2Fjobs%3Fstatus%3Dfailed"
    assert client.get("/ui/outputs/1/0").status_code == 401
    # The admin token as a bearer or in the URL opens nothing here: only the cookie does.
    assert client.get("/ui", headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 303
    assert client.get(f"/ui?token={ADMIN}").status_code == 303


def test_a_wrong_token_is_refused_without_a_cookie(client: TestClient) -> None:
    answer = client.post("/ui/login", data={"token": WEBHOOK})
    assert answer.status_code == 401
    assert "not the admin token" in answer.text
    assert "set-cookie" not in answer.headers
    assert client.get("/ui").status_code == 303


def test_the_session_cookie_is_http_only_strict_and_secure_over_https(service: Service) -> None:
    app = create_app(service, Tokens(WEBHOOK, ADMIN))
    with TestClient(app, follow_redirects=False) as plain:
        cookie = plain.post("/ui/login", data={"token": ADMIN, "next": "https://evil.example/"}).headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui" in cookie
        assert "Secure" not in cookie  # plain http on localhost: a Secure cookie would never come back
    with TestClient(app, base_url="https://dashboard.example", follow_redirects=False) as tls:
        answer = tls.post("/ui/login", data={"token": ADMIN, "next": "https://evil.example/"})
        assert "Secure" in answer.headers["set-cookie"]
        assert answer.headers["location"] == "/ui"  # never sent on to another site
        assert ADMIN not in answer.headers["set-cookie"]


def test_a_forged_or_foreign_cookie_is_no_session(service: Service, client: TestClient) -> None:
    log_in(client)
    cookie = client.cookies.get("fileproc_session")
    assert cookie
    client.cookies.set("fileproc_session", cookie[:-1] + ("0" if cookie[-1] != "0" else "1"), path="/ui")
    assert client.get("/ui").status_code == 303
    # Another admin token (rotated) signs differently: old sessions end.
    with TestClient(create_app(service, Tokens(WEBHOOK, "another-admin-token")), follow_redirects=False) as other:
        other.cookies.set("fileproc_session", cookie, path="/ui")
        assert other.get("/ui").status_code == 303


def test_posts_need_the_sessions_csrf_token(service: Service, client: TestClient) -> None:
    job_id = failed_job(service)
    csrf = log_in(client)
    refused = client.post(f"/ui/jobs/{job_id}/retry", data={"csrf": "not-it"})
    assert refused.status_code == 403
    assert service.db.get_job(job_id).status == JobStatus.FAILED
    assert client.post("/ui/jobs/retry-failed", data={}).status_code == 403
    assert client.post(f"/ui/jobs/{job_id}/retry", data={"csrf": csrf}).status_code == 303
    assert service.db.get_job(job_id).status == JobStatus.QUEUED
    assert client.post("/ui/logout", data={"csrf": csrf}).status_code == 303
    assert client.get("/ui").status_code == 303


def test_pages_render_and_allow_only_their_own_assets(service: Service, client: TestClient) -> None:
    job_id = failed_job(service)
    log_in(client)
    for path, shows in [("/ui", "broken on purpose"), ("/ui/jobs?status=failed&prefix=a", "a.jpg"),
                        (f"/ui/jobs/{job_id}", "broken on purpose"), ("/ui/jobs?prefix=zzz", "No jobs match"),
                        ("/ui/pipelines?target=uploads/notes.txt", "match.suffix"),
                        ("/ui/why?target=uploads/a.jpg", "thumbnails")]:
        answer = client.get(path)
        assert answer.status_code == 200, path
        assert shows in answer.text, path
        assert "default-src 'none'" in answer.headers["content-security-policy"]
        assert "http://" not in answer.text and "https://" not in answer.text, path  # nothing from elsewhere
    assert client.get("/ui/jobs/999999").status_code == 404
    assert client.get("/ui/static/ui.css").status_code == 200


def test_search_finds_indexed_documents_with_their_words_marked(client: TestClient, service: Service) -> None:
    from fileproc.search import Document
    from fileproc.search.whoosh import WhooshIndex

    WhooshIndex(service.settings.search_dir).add([
        Document("docs", "ferry/timetable.txt", "The ferry leaves at noon <b>sharp</b>.", type="text"),
        Document("docs", "notes/other.txt", "Nothing about boats here.", type="text"),
    ])
    log_in(client)
    page = client.get("/ui/search", params={"q": "ferry"}).text
    assert "1 document<" in page and "timetable.txt" in page and "other.txt" not in page
    assert "<mark>ferry</mark>" in page.lower() or "<mark>Ferry</mark>" in page
    assert "&lt;b&gt;sharp" in page and "<b>sharp" not in page  # the document's own markup is text
    assert "No document matches" in client.get("/ui/search", params={"q": "zeppelin"}).text


def test_usage_shows_what_ran_by_function_with_its_cost(client: TestClient, service: Service) -> None:
    from fileproc.runtime.runner import run_step
    from tests.helpers import image_bytes

    log_in(client)
    assert "Nothing ran in this window" in client.get("/ui/usage").text
    info = service.storage.put("uploads", "a.jpg", image_bytes(64, 48))
    (item,) = dispatch.submit(service, ObjectEvent("uploads", "a.jpg", size=info.size, etag=info.etag), send=False)
    assert run_step(service, item.job.id, 0, "w").status == "succeeded"
    page = client.get("/ui/usage").text
    assert "<code>thumbnail</code>" in page and "cost $" in page
    assert "<code>" + item.job.created_at.strftime("%Y-%m-%d") in client.get("/ui/usage", params={"by": "day"}).text
