"""Function URLs over HTTP: ``/fn/NAME/...``, any method and sub-path, runs deployed function NAME.

Only a function given a URL (``fileproc functions url NAME``) answers here;
any other name is 404. The request becomes Lambda's function URL event and
the handler's return value the answer (:mod:`fileproc.serverless.function_url`):
429 ``{"Message": "Rate Exceeded."}`` when its reserved concurrency is all
in use, 502 ``{"Message": "Internal Server Error"}`` when it failed; every
answer from the function carries its request id in ``x-amzn-RequestId``.

- Auth ``none``: anyone may call it. Auth ``token``: ``Authorization:
  Bearer T`` with the admin token or the function's own (``fileproc
  functions token NAME``), else 401; the header is not passed on.
- CORS (``--cors ORIGINS``): a preflight ``OPTIONS`` is answered here,
  without invoking the function or asking for a token; other answers get
  ``Access-Control-Allow-Origin`` for a listed origin.
- A body is at most ``api.max_body_bytes`` (413 past it: :class:`fileproc.web.bounds.BodyLimit`).

The function runs in this API process's warm runners, on a thread (the
event loop goes on serving meanwhile); at most :data:`CONCURRENCY` at once
per process, the others wait their turn. A URL's settings are read from the
state database, and trusted for ``functions.alias_seconds`` (:class:`KnownUrls`).
"""

from __future__ import annotations

import time
from functools import partial

import anyio
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response
from starlette.types import Scope

from fileproc.errors import FunctionNotFound
from fileproc.runtime.pool import MAX_IDLE
from fileproc.serverless.function_url import HttpAnswer, HttpRequest, invoke_url, is_preflight, preflight, with_cors
from fileproc.service import Service
from fileproc.state.function_urls import FunctionUrl, get_url
from fileproc.web.context import ServiceDep
from fileproc.web.functions import allowed

PREFIX = "/fn/"
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
CONCURRENCY = MAX_IDLE
"""Function URL invocations one API process runs at once (each holds a thread and a runner while it runs).
As many as the warm runners a process keeps: past that, each runner beyond them would be stopped after its
request and the next one start cold (4 at once took 270 requests/s on two cores, with p99 110 ms; 16: 231
and 344 ms)."""

router = APIRouter()


@router.api_route("/fn/{name}", methods=METHODS, include_in_schema=False)
@router.api_route("/fn/{name}/{rest:path}", methods=METHODS, include_in_schema=False)
async def function_url(service: ServiceDep, name: str, request: Request) -> Response:
    body = await request.body()
    urls = _urls(request)
    answer = await anyio.to_thread.run_sync(partial(answer_request, service, name, request, body, urls),
                                            limiter=urls.limiter)
    response = Response(answer.body, answer.status)
    response.raw_headers.extend((n.encode("latin-1"), v.encode("latin-1")) for n, v in answer.headers)
    return response


def answer_request(service: Service, name: str, request: Request, body: bytes, urls: KnownUrls) -> HttpAnswer:
    """The answer to one request to ``name``'s URL (on a worker thread: it runs the function)."""
    url = urls.get(name)
    if url is None:
        raise HTTPException(404, f"no function URL {PREFIX}{name}/ (see `fileproc functions url --help`)")
    scope = request.scope
    headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in scope["headers"]]
    named = {n: v for n, v in headers}  # ASGI header names are lower-case
    if url.cors and is_preflight(request.method, named):
        return preflight(url.cors, named)
    dropped: tuple[str, ...] = ()
    if url.auth == "token":
        allowed(service, request, name)  # 401 without the admin token or the function's own
        dropped = ("authorization",)
    client = scope.get("client")
    http = HttpRequest(request.method, sub_path(scope, name), scope["query_string"].decode("latin-1"), headers,
                       body, client[0] if client else "", f"HTTP/{scope.get('http_version', '1.1')}")
    try:
        answer, invocation = invoke_url(service, name, http, drop_headers=dropped)
    except FunctionNotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    answer = HttpAnswer(answer.status, [*answer.headers, ("x-amzn-requestid", invocation.request_id)], answer.body)
    return with_cors(answer, url.cors, named.get("origin", "")) if url.cors else answer


def sub_path(scope: Scope, name: str) -> str:
    """What follows ``/fn/NAME`` in the request's path, as sent (percent-encoded); ``/`` at least."""
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if isinstance(raw, bytes) else str(scope["path"])
    prefix = f"{PREFIX}{name}"
    if not path.startswith(prefix):  # the name itself was percent-encoded: go by the decoded path
        path = str(scope["path"])
    rest = path[len(prefix):]
    return rest if rest.startswith("/") else "/" + rest


class KnownUrls:
    """The function URLs' settings as this process last read them, trusted ``functions.alias_seconds`` (as a
    deployed function's alias is: a change reaches every API host within it), and the limit of invocations
    at once. Reading them costs 0.5 ms, a sixth of a whole request."""

    MAX = 1024  # names remembered (any name may be asked for: forget them all past this)

    def __init__(self, service: Service) -> None:
        self.service = service
        self.limiter = anyio.CapacityLimiter(CONCURRENCY)
        self._read: dict[str, tuple[float, FunctionUrl | None]] = {}

    def get(self, name: str) -> FunctionUrl | None:
        now = time.monotonic()
        known = self._read.get(name)
        if known is not None and known[0] > now:
            return known[1]
        url = get_url(self.service.db, name)
        trust = self.service.settings.functions.alias_seconds
        if trust > 0:
            if len(self._read) >= self.MAX:
                self._read = {}
            self._read[name] = (now + trust, url)
        return url


def _urls(request: Request) -> KnownUrls:
    """The app's :class:`KnownUrls` (made on first use: inside the app's event loop, for its limiter)."""
    state = request.app.state
    urls = getattr(state, "function_urls", None)
    if urls is None:
        urls = state.function_urls = KnownUrls(state.service)
    return urls


__all__ = ["CONCURRENCY", "METHODS", "PREFIX", "KnownUrls", "answer_request", "function_url", "router", "sub_path"]
