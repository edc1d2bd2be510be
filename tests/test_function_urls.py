"""Function URLs: a deployed function answering HTTP at /fn/NAME/..., as Lambda's function URLs do.

Against a real ``fileproc serve`` on a free port (its API runs the function
in its own warm runners) with functions deployed and given URLs by the real
CLI. Each test sends real HTTP requests and reads what the handler got
(tests/lambda_functions/http_backend echoes its event at /echo...) and
what the client got back.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from fileproc.serverless.function_url import BadResponse, HttpRequest, answer_of, request_event
from tests.procs import Process, fileproc, wait_for, wait_healthy, write_config
from tests.servers import free_port

BACKEND = Path(__file__).parent / "lambda_functions" / "http_backend"
ADMIN = "url-admin-token"
ORIGIN = "https://app.example"
MAX_BODY = 64 * 1024


@dataclass
class Api:
    config: Path
    base: str
    server: Process
    function_token: str

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, self.base + path, timeout=60, **kwargs)

    def event(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """The event the handler got (it answers /echo... with it)."""
        answer = self.call(method, path, **kwargs)
        assert answer.status_code == 200, answer.text
        return answer.json()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    root = tmp_path_factory.mktemp("urls")
    port = free_port()
    config = write_config(root / "fileproc.toml", {
        "data_dir": str(root / "data"),
        "functions": {"alias_seconds": 0},
        "api": {"port": port, "admin_token": ADMIN, "webhook_token": "url-webhook-token",
                "max_body_bytes": MAX_BODY},
    })
    for name, options in (("web", []), ("locked", []), ("narrow", ["--concurrency", "1"]), ("hidden", [])):
        fileproc(config, "functions", "deploy", str(BACKEND), "--name", name, "--handler", "app.handler", *options)
    fileproc(config, "functions", "url", "web", "--auth", "none", "--cors", ORIGIN)
    fileproc(config, "functions", "url", "narrow", "--auth", "none")
    fileproc(config, "functions", "url", "locked")  # a new URL's default: token
    token = fileproc(config, "functions", "token", "locked").stdout.strip()
    server = Process(config, ["serve"], root / "serve.log")
    try:
        wait_healthy(port, server)
        yield Api(config, f"http://127.0.0.1:{port}", server, token)
    finally:
        assert server.stop() == 0, server.tail()


# --- the event ------------------------------------------------------------------------------


def test_the_handler_gets_lambdas_function_url_event(api: Api) -> None:
    headers = [("X-Multi", "one"), ("X-Multi", "two"), ("Cookie", "c1=v1; c2=v2"), ("User-Agent", "probe/1.0"),
               ("Content-Type", "application/json")]
    event = api.event("POST", "/fn/web/echo/a%20b/c?x=1&x=2&name=Jane%20Doe&empty=", headers=headers,
                      content=b'{"k": "v"}')

    assert event["version"] == "2.0" and event["routeKey"] == "$default"
    assert event["rawPath"] == "/echo/a%20b/c"  # what follows /fn/NAME, as sent
    assert event["rawQueryString"] == "x=1&x=2&name=Jane%20Doe&empty="
    assert event["queryStringParameters"] == {"x": "1,2", "name": "Jane Doe", "empty": ""}
    assert event["cookies"] == ["c1=v1", "c2=v2"]
    assert event["headers"]["x-multi"] == "one,two"  # lower-case, repeated ones comma-joined
    assert event["headers"]["content-type"] == "application/json"
    assert "cookie" not in event["headers"]
    assert event["body"] == '{"k": "v"}' and event["isBase64Encoded"] is False  # JSON comes as text
    context = event["requestContext"]
    assert context["http"] == {"method": "POST", "path": "/echo/a b/c", "protocol": "HTTP/1.1",
                               "sourceIp": "127.0.0.1", "userAgent": "probe/1.0"}
    assert context["routeKey"] == "$default" and context["stage"] == "$default"
    assert context["apiId"] == context["domainPrefix"] == "web"
    assert context["domainName"] == api.base.removeprefix("http://")
    assert context["accountId"] == "000000000000" and context["authorizer"] is None
    assert abs(context["timeEpoch"] / 1000 - time.time()) < 60
    assert time.strftime("%d/%b/%Y", time.gmtime(context["timeEpoch"] / 1000)) == context["time"][:11]
    assert context["time"].endswith(" +0000") and len(context["requestId"]) == 36
    assert event["pathParameters"] is None and event["stageVariables"] is None


def test_text_bodies_come_as_text_and_every_other_body_base64_encoded(api: Api) -> None:
    binary = bytes(range(256)) * 4
    event = api.event("PUT", "/fn/web/echo", content=binary, headers={"Content-Type": "application/octet-stream"})
    assert event["isBase64Encoded"] is True and base64.b64decode(event["body"]) == binary

    # As function URLs do: a form and a body without a content type are base64-encoded too.
    event = api.event("POST", "/fn/web/echo", data={"a": "1"})
    assert event["headers"]["content-type"] == "application/x-www-form-urlencoded"
    assert event["isBase64Encoded"] is True and base64.b64decode(event["body"]) == b"a=1"

    event = api.event("POST", "/fn/web/echo", content="héllo".encode(), headers={"Content-Type": "text/plain"})
    assert event["body"] == "héllo" and event["isBase64Encoded"] is False

    event = api.event("GET", "/fn/web/echo")
    assert "body" not in event and event["isBase64Encoded"] is False
    assert event["rawQueryString"] == "" and "queryStringParameters" not in event and "cookies" not in event


def test_any_method_and_the_root_reach_the_function(api: Api) -> None:
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        assert api.event(method, "/fn/web/echo/x")["requestContext"]["http"]["method"] == method
    assert api.call("GET", "/fn/web").json() == {"hello": "world"}
    assert api.call("GET", "/fn/web/").json() == {"hello": "world"}
    assert api.call("HEAD", "/fn/web/").status_code == 200
    # OPTIONS that is not a CORS preflight is the function's, like any method.
    assert api.call("OPTIONS", "/fn/web/echo").json()["requestContext"]["http"]["method"] == "OPTIONS"


# --- the answer -----------------------------------------------------------------------------


def test_the_return_value_becomes_the_http_answer_as_on_lambda(api: Api) -> None:
    custom = api.call("GET", "/fn/web/custom")
    assert custom.status_code == 201 and custom.text == "created"
    assert custom.headers["content-type"] == "text/plain" and custom.headers["x-custom"] == "yes"
    assert custom.headers.get_list("set-cookie") == ["session=abc; Path=/; HttpOnly", "theme=dark; Max-Age=60"]
    assert len(custom.headers["x-amzn-requestid"]) == 36

    binary = api.call("GET", "/fn/web/binary")
    assert binary.status_code == 200 and binary.content == bytes(range(256))
    assert binary.headers["content-type"] == "application/octet-stream"

    # Lambda's documented examples: a string is a JSON answer of the string, a dict one of the dict.
    string = api.call("GET", "/fn/web/string")
    assert (string.status_code, string.headers["content-type"], string.text) == (
        200, "application/json", '"Hello, world!"')
    plain = api.call("GET", "/fn/web/")
    assert plain.headers["content-type"] == "application/json" and plain.json() == {"hello": "world"}
    nothing = api.call("GET", "/fn/web/none")
    assert nothing.status_code == 200 and nothing.content == b""


def test_a_failing_handler_answers_502_as_function_urls_do(api: Api) -> None:
    for path in ("/fn/web/fail", "/fn/web/bad"):  # raised; returned a statusCode that is none
        answer = api.call("GET", path)
        assert answer.status_code == 502, answer.text
        assert answer.json() == {"Message": "Internal Server Error"}
    assert api.call("GET", "/fn/web/").status_code == 200  # and the next request is served as ever


def test_reserved_concurrency_in_use_answers_429(api: Api) -> None:
    assert api.call("GET", "/fn/narrow/").status_code == 200  # warm: the slow request runs at once
    slow: list[httpx.Response] = []
    first = threading.Thread(target=lambda: slow.append(api.call("GET", "/fn/narrow/slow?seconds=5")))
    first.start()
    time.sleep(1)  # it holds the one slot (had a request of ours come first, the slow one would be throttled)
    try:
        def throttled() -> httpx.Response | None:
            answer = api.call("GET", "/fn/narrow/")
            return answer if answer.status_code == 429 else None

        answer = wait_for(throttled, 3, "a second request to be throttled", api.server, interval=0.1)
        assert answer.json() == {"Message": "Rate Exceeded."}
    finally:
        first.join()
    assert slow[0].status_code == 200 and slow[0].json() == {"slept": True}
    assert api.call("GET", "/fn/narrow/").status_code == 200  # its slot is free again


def test_a_body_over_the_limit_is_refused_with_413(api: Api) -> None:
    answer = api.call("POST", "/fn/web/echo", content=b"x" * (MAX_BODY + 1))
    assert answer.status_code == 413 and "api.max_body_bytes" in answer.json()["error"]
    chunked = api.call("POST", "/fn/web/echo", content=iter([b"x" * 40_000, b"x" * 40_000]))
    assert chunked.status_code == 413
    assert api.event("POST", "/fn/web/echo", content=b"x" * MAX_BODY)["isBase64Encoded"] is True


# --- who may call it ------------------------------------------------------------------------


def test_a_token_url_takes_the_admin_token_or_the_functions_own_and_hides_it(api: Api) -> None:
    assert api.call("GET", "/fn/locked/").status_code == 401
    assert api.call("GET", "/fn/locked/", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert api.call("GET", "/fn/locked/", headers={"Authorization": "Bearer url-webhook-token"}).status_code == 401
    for token in (ADMIN, api.function_token):
        event = api.event("GET", "/fn/locked/echo", headers={"Authorization": f"Bearer {token}"})
        assert "authorization" not in event["headers"]  # the token is no business of the function's
    assert "authorization" in api.event("GET", "/fn/web/echo", headers={"Authorization": "Bearer mine"})["headers"]


def test_only_functions_given_a_url_answer(api: Api) -> None:
    assert api.call("GET", "/fn/hidden/").status_code == 404  # deployed, no URL
    assert api.call("GET", "/fn/nosuch/").status_code == 404
    assert api.call("GET", "/fn/").status_code == 404


def test_cors_preflight_is_answered_and_listed_origins_allowed(api: Api) -> None:
    asked = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "content-type,authorization"}
    answer = api.call("OPTIONS", "/fn/web/echo", headers=asked)
    assert answer.status_code == 204
    assert answer.headers["access-control-allow-origin"] == ORIGIN
    assert answer.headers["access-control-allow-methods"] == "POST"
    assert answer.headers["access-control-allow-headers"] == "content-type,authorization"
    elsewhere = api.call("OPTIONS", "/fn/web/echo", headers={**asked, "Origin": "https://evil.example"})
    assert elsewhere.status_code == 403 and "access-control-allow-origin" not in elsewhere.headers

    # The URL's CORS headers replace any the function sets.
    custom = api.call("GET", "/fn/web/custom", headers={"Origin": ORIGIN})
    assert custom.headers.get_list("access-control-allow-origin") == [ORIGIN]
    assert "access-control-allow-origin" not in api.call("GET", "/fn/web/custom",
                                                         headers={"Origin": "https://evil.example"}).headers


# --- the same invocations as any ------------------------------------------------------------


def test_each_request_is_an_invocation_in_the_functions_logs(api: Api) -> None:
    answer = api.call("POST", "/fn/web/echo/logged?q=1", content=b"{}", headers={"Content-Type": "application/json"})
    request_id = answer.headers["x-amzn-requestid"]
    logs = fileproc(api.config, "logs", "web", "--limit", "1000").stdout
    start = logs.index(f"START RequestId: {request_id} Version: 1\n")
    block = logs[start:logs.index("\n", logs.index(f"REPORT RequestId: {request_id}", start))]
    assert "\nPOST /echo/logged from 127.0.0.1\n" in block and "Billed Duration" in block, block
    jobs = json.loads(fileproc(api.config, "jobs", "--json", "--limit", "500").stdout)
    (job,) = [j for j in jobs if j["bucket"] == "url:web" and j["key"] == "POST /echo/logged"]
    assert job["status"] == "succeeded" and job["pipeline"] == "_event.web"
    failed = api.call("GET", "/fn/web/fail").headers["x-amzn-requestid"]
    logs = fileproc(api.config, "logs", "web", "--limit", "1").stdout
    assert f"START RequestId: {failed}" in logs and "asked to fail" in logs, logs


def test_the_cli_sets_shows_and_deletes_a_url(api: Api) -> None:
    shown = json.loads(fileproc(api.config, "functions", "url", "narrow", "--json").stdout)
    assert shown["url"] == f"{api.base}/fn/narrow/" and shown["auth"] == "none"  # unchanged when not given
    assert json.loads(fileproc(api.config, "functions", "show", "narrow").stdout)["function_url"]["auth"] == "none"
    fileproc(api.config, "functions", "url", "hidden", "--auth", "token", "--cors", "*")
    assert api.call("GET", "/fn/hidden/").status_code == 401  # at once: no restart
    preflight = api.call("OPTIONS", "/fn/hidden/", headers={"Origin": "https://any.example",
                                                             "Access-Control-Request-Method": "GET"})
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert fileproc(api.config, "functions", "url", "hidden", "--delete").returncode == 0
    assert api.call("GET", "/fn/hidden/").status_code == 404
    refused = fileproc(api.config, "functions", "url", "nosuch", check=False)
    assert refused.returncode != 0 and "no deployed function" in refused.stderr
    bad = fileproc(api.config, "functions", "url", "web", "--cors", "example.com", check=False)
    assert bad.returncode != 0 and "--cors" in bad.stderr


# --- the mapping itself, on the edges no real request reaches --------------------------------


def test_a_return_value_lambda_could_not_answer_is_refused() -> None:
    for bad in ({"statusCode": 99}, {"statusCode": True}, {"statusCode": 200, "headers": ["x"]},
                {"statusCode": 200, "body": "%%%", "isBase64Encoded": True},
                {"statusCode": 200, "headers": {"x": "a\r\nb"}}, {"statusCode": 200, "headers": {"x": "☃"}},
                {"statusCode": 200, "cookies": "a=1"}):
        with pytest.raises(BadResponse):
            answer_of(bad)
    answer = answer_of({"statusCode": "404", "body": {"a": 1}, "headers": {"Content-Length": "9", "X-N": 5}})
    assert (answer.status, answer.body) == (404, b'{"a":1}')
    assert answer.headers == [("x-n", "5"), ("content-type", "application/json")]  # the server sets the length
    assert answer_of([1, 2]).body == b"[1,2]" and answer_of({"a": None}).body == b'{"a":null}'


def test_a_body_that_is_not_utf8_goes_base64_encoded_whatever_its_type() -> None:
    event = request_event(HttpRequest("POST", "/", "", [("content-type", "text/plain")], b"\xff\xfe", "::1"),
                          function="f", now=0)
    assert event["isBase64Encoded"] is True and event["body"] == "//4="
    assert event["requestContext"]["time"] == "01/Jan/1970:00:00:00 +0000"
