"""The API's door against abuse: bounded bodies, bounded JSON, a login rate limit, admin tokens never in URLs.

Real parts: the app on SQLite and local storage, in-process (Starlette's
TestClient), or driven through ASGI with a body that never ends; one real
``fileproc api`` process whose peak memory is read from /proc while a client
streams it a login body of many megabytes.
"""

from __future__ import annotations

import asyncio
import json
import select
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fileproc.jsonbody import MAX_JSON_DEPTH
from fileproc.service import Service
from fileproc.tokens import Tokens
from fileproc.web import create_app
from fileproc.web.app import SMALL_BODY
from fileproc.web.bounds import Limit, Throttle
from fileproc.web.functions import INVOKE_BODY
from fileproc.web.ui import LOGIN_ATTEMPTS
from tests.procs import Process, wait_healthy, write_config
from tests.servers import free_port
from tests.test_api import ADMIN, EVENTS, WEBHOOK, body, make_service, record

AS_ADMIN = {"authorization": f"Bearer {ADMIN}"}
JSON = {"content-type": "application/json"}
TOO_DEEP = f"JSON nested deeper than {MAX_JSON_DEPTH} levels"


@pytest.fixture
def service(tmp_path: Path) -> Service:
    return make_service(tmp_path)


@pytest.fixture
def client(service: Service) -> Iterator[TestClient]:
    with TestClient(create_app(service, Tokens(WEBHOOK, ADMIN)), follow_redirects=False) as test_client:
        yield test_client


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


# -- bodies ----------------------------------------------------------------------------


def peak_memory_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))


def read_answer(sock: socket.socket) -> tuple[bytes, bytes]:
    """An HTTP answer's head and body (of the Content-Length it declares)."""
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(65536)
    head, _, content = answer.partition(b"\r\n\r\n")
    fields = dict(line.lower().split(b": ", 1) for line in head.split(b"\r\n")[1:])
    length = int(fields[b"content-length"])
    while len(content) < length:
        content += sock.recv(65536)
    return head, content


def test_a_login_body_of_many_mb_is_refused_without_the_server_growing(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path / "fileproc.toml", {
        "data_dir": str(tmp_path / "data"), "broker": {"url": "redis://127.0.0.1:9/0"},
        "api": {"webhook_token": WEBHOOK, "admin_token": ADMIN},
    })
    server = Process(config, ["api", "--port", str(port)], tmp_path / "api.log")
    try:
        wait_healthy(port, server)
        with socket.create_connection(("127.0.0.1", port)) as warm:  # the login page's code, loaded once
            warm.sendall(b"POST /ui/login HTTP/1.1\r\nHost: t\r\nContent-Length: 7\r\n"
                         b"Content-Type: application/x-www-form-urlencoded\r\n\r\ntoken=x")
            assert b" 401 " in warm.recv(65536).split(b"\r\n")[0]
        before = peak_memory_kb(server.popen.pid)

        chunk = b"%x\r\n%s\r\n" % (65536, b"t" * 65536)
        sent = 0
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"POST /ui/login HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
                         b"Content-Type: application/x-www-form-urlencoded\r\n\r\n" + b"%x\r\ntoken=\r\n" % 6)
            try:
                while sent < 100 * 1024 * 1024 and not select.select([sock], [], [], 0)[0]:  # until it answers
                    sock.sendall(chunk)
                    sent += 65536
            except (BrokenPipeError, ConnectionResetError):
                pass
            head, reason = read_answer(sock)
        assert head.startswith(b"HTTP/1.1 413 "), head
        assert b"/ui/login" in reason
        assert sent < 32 * 1024 * 1024  # refused while the client was still sending
        assert peak_memory_kb(server.popen.pid) - before < 20 * 1024, "the server held the body"
    finally:
        server.stop()


def test_no_route_reads_a_body_past_its_limit(service: Service) -> None:
    app = create_app(service, Tokens(WEBHOOK, ADMIN))

    def endless_post(path: str, token: str) -> tuple[int, dict[str, Any], int]:
        """POST a chunked body that never ends; the status, the answer and how much of the body was read."""
        pulled, sent = 0, []

        async def receive() -> dict[str, Any]:
            nonlocal pulled
            pulled += 65536  # "never": 64 MB, past every limit
            return {"type": "http.request", "body": b"x" * 65536, "more_body": pulled < 64 * 1024 * 1024}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
                 "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
                 "headers": [(b"host", b"t"), (b"transfer-encoding", b"chunked"),
                             (b"authorization", f"Bearer {token}".encode())],
                 "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 80)}
        asyncio.run(app(scope, receive, send))
        return sent[0]["status"], json.loads(sent[1]["body"]), pulled

    for path, token, limit in [("/ui/login", "", SMALL_BODY.bytes), ("/backfill", ADMIN, SMALL_BODY.bytes),
                               ("/functions/thumbnail/invoke", ADMIN, INVOKE_BODY.bytes),
                               ("/events", WEBHOOK, service.settings.api.max_body_bytes)]:
        status, answer, pulled = endless_post(path, token)
        assert status == 413, (path, answer)
        assert f"over {limit} bytes, the most POST {path} takes" in answer["error"]
        assert pulled <= limit + 65536, path


READ = [("POST", "/ui/login", SMALL_BODY), ("POST", "/backfill", SMALL_BODY),
        ("POST", "/functions/thumbnail/invoke", INVOKE_BODY)]
"""Routes that read their body (a chunked one is counted as it is read)."""
UNREAD = [("POST", "/ui/logout", SMALL_BODY), ("POST", "/ui/jobs/1/retry", SMALL_BODY),
          ("POST", "/jobs/retry-failed", SMALL_BODY), ("GET", "/jobs", SMALL_BODY), ("GET", "/healthz", SMALL_BODY)]
"""Routes that answer without reading a body (one declared too large is refused all the same)."""


@pytest.mark.parametrize(("method", "path", "limit", "chunked"),
                         [(*route, False) for route in READ + UNREAD] + [(*route, True) for route in READ])
def test_each_route_refuses_a_body_over_its_limit(client: TestClient, method: str, path: str, limit: Limit,
                                                 chunked: bool) -> None:
    event = json.dumps({"event": {"Records": [record("a.jpg")], "padding": "p" * limit.bytes}}).encode()
    content = (event[i:i + 8192] for i in range(0, len(event), 8192)) if chunked else event
    answer = client.request(method, path, content=content, headers={**AS_ADMIN, **JSON})
    assert answer.status_code == 413, answer.text
    assert answer.json()["error"] == (f"request body over {limit.bytes} bytes, the most {method} {path} takes "
                                      f"({limit.why})")


def test_an_invocation_takes_an_event_up_to_its_limit_and_not_a_byte_more(client: TestClient,
                                                                          service: Service) -> None:
    service.storage.put("uploads", "a.jpg", b"\xff\xd8" + b"x" * 500)
    event = json.dumps({"event": {"Records": [record("a.jpg")], "padding": ""}}).encode()
    largest = event.replace(b'"padding": ""', b'"padding": "' + b"p" * (INVOKE_BODY.bytes - len(event)) + b'"')
    assert len(largest) == INVOKE_BODY.bytes
    invoke = "/functions/thumbnail/invoke?mode=async"
    assert client.post(invoke, content=largest, headers={**AS_ADMIN, **JSON}).status_code == 202
    assert client.post(invoke, content=largest + b" ", headers={**AS_ADMIN, **JSON}).status_code == 413


# -- JSON ------------------------------------------------------------------------------


def test_json_nested_10000_deep_is_refused_with_the_reason_and_within_the_limit_taken(client: TestClient) -> None:
    answer = client.post(EVENTS, content=b'{"Records": ' + nested(10_000) + b"}")
    assert (answer.status_code, answer.json()) == (400, {"error": TOO_DEEP})
    answer = client.post("/functions/thumbnail/invoke", content=b'{"event": ' + nested(10_000) + b"}",
                         headers={**AS_ADMIN, **JSON})
    assert (answer.status_code, answer.json()) == (400, {"error": TOO_DEEP})
    # Past the limit but within what Python's parser takes: refused just the same.
    answer = client.post("/backfill", content=b'{"bucket": "uploads", "x": ' + nested(MAX_JSON_DEPTH) + b"}",
                         headers={**AS_ADMIN, **JSON})
    assert (answer.status_code, answer.json()) == (400, {"error": TOO_DEEP})
    # As deep as it may be: {"Records": [{"s3": {"object": {"userMetadata": {"x-amz-meta-deep": [[...]]}}}}]}
    deep = json.loads(nested(MAX_JSON_DEPTH - 6))
    answer = client.post(EVENTS, content=body(record("a.jpg", userMetadata={"x-amz-meta-deep": deep})))
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["jobs"]) == 1


@pytest.mark.parametrize("path", [EVENTS, "/functions/thumbnail/invoke", "/backfill"])
def test_a_body_that_is_not_json_is_refused_with_the_reason(client: TestClient, path: str) -> None:
    token = {} if path == EVENTS else AS_ADMIN  # the webhook's is in the URL
    answer = client.post(path, content=b'{"bucket": "uploads",', headers={**JSON, **token})
    assert answer.status_code == 400
    assert answer.json()["error"].startswith("body is not JSON: Expecting property name")


# -- the login -------------------------------------------------------------------------


def test_wrong_tokens_past_the_limit_make_the_address_wait(service: Service, client: TestClient) -> None:
    for _ in range(LOGIN_ATTEMPTS):
        assert client.post("/ui/login", data={"token": "guess"}).status_code == 401
    refused = client.post("/ui/login", data={"token": ADMIN})  # even the right one, now
    assert refused.status_code == 429
    assert 55 <= int(refused.headers["retry-after"]) <= 60
    assert "Too many wrong tokens" in refused.text and "set-cookie" not in refused.headers
    app = client.app
    with TestClient(app, client=("192.0.2.7", 5000), follow_redirects=False) as elsewhere:
        assert elsewhere.post("/ui/login", data={"token": ADMIN}).status_code == 303


def test_the_throttle_forgets_failures_a_window_old() -> None:
    now = [1000.0]
    throttle = Throttle(attempts=3, window=60, clock=lambda: now[0])
    for _ in range(3):
        assert throttle.wait("203.0.113.5") == 0
        throttle.failed("203.0.113.5")
        now[0] += 10
    assert throttle.wait("203.0.113.5") == 30  # the first failure is 30 s from a minute old
    now[0] += 30
    assert throttle.wait("203.0.113.5") == 0
    throttle.failed("203.0.113.5")
    assert throttle.wait("203.0.113.5") == 10  # three within the last minute again
    throttle.succeeded("203.0.113.5")
    assert throttle.wait("203.0.113.5") == 0


def test_the_throttle_counts_an_ipv6_host_by_its_64_and_remembers_a_bounded_number() -> None:
    throttle = Throttle(attempts=2, window=60, clients=3)
    throttle.failed("2001:db8:1:2::10")
    throttle.failed("2001:db8:1:2:ffff::99")  # another address of the same /64
    assert throttle.wait("2001:db8:1:2::1") > 0
    assert throttle.wait("2001:db8:1:3::1") == 0
    for n in range(3):  # three other clients fail: the one that failed first is forgotten
        throttle.failed(f"198.51.100.{n}")
        throttle.failed(f"198.51.100.{n}")
    assert throttle.wait("2001:db8:1:2::1") == 0
    assert all(throttle.wait(f"198.51.100.{n}") > 0 for n in range(3))


# -- tokens ----------------------------------------------------------------------------


def test_the_admin_token_goes_in_the_header_never_in_the_url_the_webhooks_may(client: TestClient) -> None:
    for path in ("/jobs", "/stats", "/metrics", "/openapi.json", "/why?bucket=uploads&key=a.jpg"):
        url = path + ("&" if "?" in path else "?") + f"token={ADMIN}"
        assert client.get(url).status_code == 401, path
        assert client.get(path, headers=AS_ADMIN).status_code == 200, path
    assert client.post(f"/jobs/retry-failed?token={ADMIN}").status_code == 401
    answer = client.post(f"/functions/thumbnail/invoke?token={ADMIN}", json={"bucket": "uploads", "key": "a.jpg"})
    assert answer.status_code == 401
    # versitygw cannot set headers: the webhook's token alone is taken from the URL.
    assert client.post(f"/events?token={WEBHOOK}", content=body(record("a.jpg"))).status_code == 200
    assert client.post(f"/events?token={ADMIN}", content=body(record("b.jpg"))).status_code == 401
