"""Lambda function URLs: an HTTP request as Lambda's event, and what the handler returns as the HTTP answer.

The event is API Gateway's HTTP API payload 2.0, as a function URL gives it
(:func:`request_event`); the answer is read from the handler's return value
as Lambda reads it (:func:`answer_of`): a dict with ``statusCode`` gives the
status, ``headers``, ``cookies`` (each a ``Set-Cookie``), ``body`` and
``isBase64Encoded``; anything else that is not None (a dict without
``statusCode``, a list, a string, a number) is a 200 ``application/json``
answer of its JSON. :func:`invoke_url` runs the function on the event (in
this process's warm runners, recorded like any invocation: see
:func:`fileproc.runtime.direct.invoke_event`) and gives the answer, Lambda's
429 and 502 included. The HTTP side is :mod:`fileproc.web.function_urls`;
this module knows no web framework.

Where fileproc differs from Lambda, and why:

- the URL is ``/fn/NAME/...`` on the API rather than a host of its own, so
  ``rawPath`` is what follows ``/fn/NAME`` (``/`` at least): the path the
  handler would see at its own host. ``apiId`` and ``domainPrefix`` are the
  function's name (the URL's id), ``domainName`` the Host the client used;
- ``accountId`` is fileproc's account (:data:`fileproc.functions.ACCOUNT_ID`);
  ``authorizer`` is null: a ``token`` URL's caller proved only that it holds
  a token, and its ``Authorization`` header is not passed on (the admin token
  is no business of the function's).

Example::

    event = request_event(HttpRequest("GET", "/hello", "name=Jane", [("host", "api")], b"", "10.0.0.9"),
                          function="greet")
    answer = answer_of({"statusCode": 201, "body": "hi", "cookies": ["a=1"]})   # HttpAnswer(201, ...)
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, unquote

from fileproc.functions import ACCOUNT_ID
from fileproc.runtime.direct import Invocation, invoke_event
from fileproc.service import Service

log = logging.getLogger(__name__)

TEXT_TYPES = ("application/json", "application/javascript", "application/xml")
"""Content types (besides ``text/*``) whose body the handler gets as text. Every other body, one without a
content type and ``application/x-www-form-urlencoded`` too, comes base64-encoded, as function URLs do."""

HOP_BY_HOP = frozenset({"connection", "content-length", "keep-alive", "transfer-encoding", "upgrade"})
"""Response headers a handler may not set: the server writes them for the body it sends."""


@dataclass(frozen=True)
class HttpRequest:
    """One request to a function URL, as it came: ``path`` is the part after ``/fn/NAME`` (still
    percent-encoded), ``query`` the raw query string, ``headers`` in order with duplicates."""

    method: str
    path: str
    query: str
    headers: Sequence[tuple[str, str]]
    body: bytes
    source_ip: str
    protocol: str = "HTTP/1.1"


@dataclass(frozen=True)
class HttpAnswer:
    """The HTTP answer: a status, headers in order (``set-cookie`` may repeat) and the body's bytes."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""


class BadResponse(ValueError):
    """A handler's return value that no HTTP answer can be made of (Lambda answers 502)."""


# --- the request -------------------------------------------------------------------------------


def request_event(request: HttpRequest, *, function: str, request_id: str | None = None,
                  now: float | None = None, drop_headers: Sequence[str] = ()) -> dict[str, Any]:
    """Lambda's function URL event (payload 2.0) of ``request``, to ``function``'s URL.

    Header names are lower-cased and a repeated header's values joined with
    commas; the ``cookie`` header becomes ``cookies`` (one item per cookie);
    ``drop_headers`` are left out. Query parameters are decoded, a repeated
    one's values joined with commas. A body of a text type is given as text,
    any other base64-encoded; an empty body is left out.
    """
    now = time.time() if now is None else now
    headers: dict[str, str] = {}
    cookies: list[str] = []
    for name, value in request.headers:
        name = name.lower()
        if name == "cookie":
            cookies.extend(c.strip() for c in value.split(";") if c.strip())
        elif name not in drop_headers:
            headers[name] = f"{headers[name]},{value}" if name in headers else value
    path = request.path or "/"
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": request.query,
    }
    if cookies:
        event["cookies"] = cookies
    event["headers"] = headers
    if request.query:
        event["queryStringParameters"] = _parameters(request.query)
    event["requestContext"] = {
        "accountId": ACCOUNT_ID,
        "apiId": function,
        "authentication": None,
        "authorizer": None,
        "domainName": headers.get("host", ""),
        "domainPrefix": function,
        "http": {"method": request.method, "path": unquote(path), "protocol": request.protocol,
                 "sourceIp": request.source_ip, "userAgent": headers.get("user-agent", "")},
        "requestId": request_id or str(uuid.uuid4()),
        "routeKey": "$default",
        "stage": "$default",
        "time": datetime.fromtimestamp(now, UTC).strftime("%d/%b/%Y:%H:%M:%S +0000"),
        "timeEpoch": int(now * 1000),
    }
    if request.body:
        text = _as_text(request.body, headers.get("content-type", ""))
        event["body"] = text if text is not None else base64.b64encode(request.body).decode("ascii")
        event["isBase64Encoded"] = text is None
    else:
        event["isBase64Encoded"] = False
    event["pathParameters"] = None
    event["stageVariables"] = None
    return event


def _parameters(query: str) -> dict[str, str]:
    parameters: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        parameters[name] = f"{parameters[name]},{value}" if name in parameters else value
    return parameters


def _as_text(body: bytes, content_type: str) -> str | None:
    """The body as text if its content type is a text one and it is UTF-8; None: it goes base64-encoded."""
    kind = content_type.partition(";")[0].strip().lower()
    if not (kind.startswith("text/") or kind in TEXT_TYPES):
        return None
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return None


# --- the answer --------------------------------------------------------------------------------


def json_answer(status: int, data: Any) -> HttpAnswer:
    return HttpAnswer(status, [("content-type", "application/json")],
                      json.dumps(data, separators=(",", ":")).encode())


THROTTLED = json_answer(429, {"Message": "Rate Exceeded."})
"""Lambda's answer when the function's reserved concurrency is all in use."""
FAILED = json_answer(502, {"Message": "Internal Server Error"})
"""Lambda's answer when the handler raised, timed out or ran out of memory, or returned no valid answer."""


def answer_of(result: Any) -> HttpAnswer:
    """The HTTP answer a handler's return value makes, as Lambda makes it; BadResponse if none can be made."""
    if result is None:
        return HttpAnswer(200)
    if not isinstance(result, dict) or "statusCode" not in result:
        return json_answer(200, result)
    status = result["statusCode"]
    if isinstance(status, str) and status.isdigit():
        status = int(status)
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
        raise BadResponse(f"statusCode {result['statusCode']!r}: not an HTTP status")
    headers = _headers(result.get("headers"))
    cookies = result.get("cookies") or []
    if not isinstance(cookies, list):
        raise BadResponse("cookies: not a list of strings")
    headers += [("set-cookie", _header_text(str(cookie))) for cookie in cookies]
    body = _body(result.get("body"), bool(result.get("isBase64Encoded")))
    if body and not any(name == "content-type" for name, _ in headers):
        headers.append(("content-type", "application/json"))
    return HttpAnswer(status, headers, body)


def _headers(given: Any) -> list[tuple[str, str]]:
    if given is None:
        return []
    if not isinstance(given, dict):
        raise BadResponse("headers: not an object")
    headers = []
    for name, value in given.items():
        name = str(name).lower()
        if name in HOP_BY_HOP:
            continue
        text = value if isinstance(value, str) else json.dumps(value) if isinstance(value, dict | list) else str(value)
        headers.append((_header_text(name), _header_text(text)))
    return headers


def _header_text(text: str) -> str:
    """``text`` if it may go in a header as it is (latin-1, on one line); BadResponse otherwise."""
    if "\n" in text or "\r" in text:
        raise BadResponse(f"header {text[:40]!r}: a line break in a header")
    try:
        text.encode("latin-1")
    except UnicodeEncodeError as exc:
        raise BadResponse(f"header {text[:40]!r}: not latin-1 (encode it, as Lambda asks)") from exc
    return text


def _body(body: Any, encoded: bool) -> bytes:
    if body is None:
        return b""
    if not isinstance(body, str):
        return json.dumps(body, separators=(",", ":")).encode()
    if not encoded:
        return body.encode()
    try:
        return base64.b64decode(body, validate=True)
    except binascii.Error as exc:
        raise BadResponse("isBase64Encoded, but the body is not base64") from exc


# --- CORS --------------------------------------------------------------------------------------


def allowed_origin(origins: Sequence[str], origin: str) -> str | None:
    """The ``Access-Control-Allow-Origin`` to send ``origin``: ``*`` when any is allowed, ``origin`` itself when
    it is listed; None when it is not (or there is none)."""
    if not origin:
        return None
    if "*" in origins:
        return "*"
    return origin if origin.rstrip("/").lower() in {o.rstrip("/").lower() for o in origins} else None


def is_preflight(method: str, headers: dict[str, str]) -> bool:
    """Whether a request is a browser's CORS preflight (``headers``: lower-cased names)."""
    return method == "OPTIONS" and "origin" in headers and "access-control-request-method" in headers


def preflight(origins: Sequence[str], headers: dict[str, str]) -> HttpAnswer:
    """The answer to a CORS preflight (the function is not invoked): the origin allowed, the method and
    headers asked for; 403 for an origin not listed."""
    allowed = allowed_origin(origins, headers["origin"])
    if allowed is None:
        return json_answer(403, {"Message": f"CORS: origin {headers['origin']!r} is not allowed"})
    answer = [("access-control-allow-origin", allowed),
              ("access-control-allow-methods", headers["access-control-request-method"])]
    if asked := headers.get("access-control-request-headers"):
        answer.append(("access-control-allow-headers", asked))
    answer.append(("access-control-max-age", "600"))
    if allowed != "*":
        answer.append(("vary", "Origin"))
    return HttpAnswer(204, answer)


def with_cors(answer: HttpAnswer, origins: Sequence[str], origin: str) -> HttpAnswer:
    """``answer`` with the URL's CORS headers in place of any the function set (as Lambda does)."""
    headers = [(n, v) for n, v in answer.headers if not n.startswith("access-control-")]
    allowed = allowed_origin(origins, origin)
    if allowed is not None:
        headers.append(("access-control-allow-origin", allowed))
        if allowed != "*":
            headers.append(("vary", "Origin"))
    return HttpAnswer(answer.status, headers, answer.body)


# --- both --------------------------------------------------------------------------------------


def invoke_url(service: Service, function: str, request: HttpRequest, *,
               drop_headers: Sequence[str] = ()) -> tuple[HttpAnswer, Invocation]:
    """Run ``function`` on ``request`` now (in this process's warm runners, recorded like any invocation)
    and give the answer to send, with the invocation (its request id goes back in ``x-amzn-RequestId``).

    FunctionNotFound if there is no such function.
    """
    event = request_event(request, function=function, drop_headers=drop_headers)
    what = f"{request.method} {unquote(request.path or '/')}"[:1000]
    invocation = invoke_event(service, function, event, trigger=f"url:{function}", what=what,
                              summary={"method": request.method, "path": event["requestContext"]["http"]["path"],
                                       "sourceIp": request.source_ip})
    if invocation.throttled:
        answer = THROTTLED
    elif not invocation.ok:
        answer = FAILED
    else:
        try:
            answer = answer_of(invocation.result)
        except BadResponse as exc:
            log.warning("function URL of %s: %s (request %s)", function, exc, invocation.request_id)
            answer = FAILED
    return answer, invocation


__all__ = ["FAILED", "HOP_BY_HOP", "TEXT_TYPES", "THROTTLED", "BadResponse", "HttpAnswer", "HttpRequest",
           "allowed_origin", "answer_of", "invoke_url", "is_preflight", "json_answer", "preflight", "request_event",
           "with_cors"]
