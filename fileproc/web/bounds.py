"""What one request may cost the API before it is refused: its body, its JSON, a client's failed logins.

- :class:`BodyLimit`: ASGI middleware that counts a request body's bytes as
  they arrive (declared with Content-Length or chunked) and answers 413 with
  the reason once they pass the route's :class:`Limit`; nothing past it is read.
- :class:`JSONRoute`: FastAPI parses every JSON body with
  :func:`fileproc.jsonbody.loads` (400 with the reason when it does not
  parse or nests too deep).
- :class:`Throttle`: failed attempts per client address (the dashboard's
  login); past a few a minute the client waits (429).
"""

from __future__ import annotations

import ipaddress
import json
import math
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fileproc.jsonbody import BadJSON, loads

# -- body size -------------------------------------------------------------------------


@dataclass(frozen=True)
class Limit:
    """The largest request body a route takes, and why (named in the 413)."""

    bytes: int
    why: str


class BodyTooLarge(HTTPException):
    """A request body over its route's limit (413).

    An HTTPException, because FastAPI turns anything else raised while it
    reads a body into a bare 400. The connection is left open: the server
    drops the rest of the body as it comes in, and the client reads the
    reason (closing with the body unread would reset the connection first).
    """

    def __init__(self, scope: Scope, limit: Limit) -> None:
        super().__init__(413, f"request body over {limit.bytes} bytes, the most {scope['method']} {scope['path']} "
                              f"takes ({limit.why})")


class BodyLimit:
    """ASGI middleware: a request body is counted as it is received, and refused past its route's limit.

    A declared Content-Length over the limit is refused at once, the app never
    called. A chunked body is refused as soon as its bytes pass the limit: the
    app sees :class:`BodyTooLarge` raised from ``receive`` and answers it with
    its exception handlers (this answers if it does not). ``refused(scope)``
    is told of each refusal (to count them).

    Example::

        app = BodyLimit(app, lambda scope: Limit(16384, "a form"))
    """

    def __init__(self, app: ASGIApp, limit_for: Callable[[Scope], Limit],
                 refused: Callable[[Scope], None] = lambda scope: None) -> None:
        self.app = app
        self.limit_for = limit_for
        self.refused = refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        declared = _content_length(scope)
        if declared is not None and declared > limit.bytes:
            self.refused(scope)
            await _answer(BodyTooLarge(scope, limit), scope, receive, send)
            return
        received = 0
        over = started = False

        async def counted() -> Message:
            nonlocal over, received
            if not over:
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    over = received > limit.bytes
                    if over:
                        self.refused(scope)
                if not over:
                    return message
            if started:  # too late for a 413: the app hears that the client went away
                return {"type": "http.disconnect"}
            raise BodyTooLarge(scope, limit)

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except BodyTooLarge as exc:
            if started:
                raise
            await _answer(exc, scope, receive, send)


async def _answer(exc: BodyTooLarge, scope: Scope, receive: Receive, send: Send) -> None:
    answer = Response(json.dumps({"error": exc.detail}), 413, exc.headers, media_type="application/json")
    await answer(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


# -- JSON ------------------------------------------------------------------------------


class _JSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            try:
                self._json = loads(await self.body())
            except BadJSON as exc:  # any other error here FastAPI answers with a bare 400
                raise HTTPException(400, str(exc)) from exc
        return self._json


class JSONRoute(APIRoute):
    """A FastAPI route whose JSON body is read with :func:`loads`: 400 with the reason when it is not JSON
    or too deep (FastAPI's own parsing answers 422, or 400 with no reason)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def with_bounded_json(request: Request) -> Response:
            return await handler(_JSONRequest(request.scope, request.receive))

        return with_bounded_json


# -- failed attempts -------------------------------------------------------------------


class Throttle:
    """Failed attempts per client: past ``attempts`` within ``window`` seconds, the client waits.

    An IPv6 client counts as its /64 network (one host usually holds all of
    it). At most ``clients`` clients are remembered, those whose last failure
    is oldest forgotten first. In memory: each API process counts its own.

    Example::

        throttle = Throttle(attempts=10, window=60)
        if wait := throttle.wait(address):     # seconds until it may try again
            ...                                # 429, Retry-After: wait
        throttle.failed(address)               # a wrong token
    """

    def __init__(self, attempts: int, window: float, *, clients: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.attempts = attempts
        self.window = window
        self.clients = clients
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}  # oldest last failure first

    def wait(self, address: str) -> int:
        """Seconds ``address`` must wait before its next attempt; 0 when it may try now."""
        failures = self._failures.get(_client(address))
        if failures is None or len(failures) < self.attempts:
            return 0
        return max(0, math.ceil(failures[0] + self.window - self._clock()))

    def failed(self, address: str) -> None:
        now = self._clock()
        client = _client(address)
        failures = self._failures.pop(client, None) or deque(maxlen=self.attempts)
        failures.append(now)
        self._failures[client] = failures
        while len(self._failures) > self.clients or next(iter(self._failures.values()))[-1] <= now - self.window:
            del self._failures[next(iter(self._failures))]

    def succeeded(self, address: str) -> None:
        self._failures.pop(_client(address), None)


def _client(address: str) -> str:
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address):
        return str(parsed.ipv4_mapped or ipaddress.ip_network(f"{parsed}/64", strict=False))
    return str(parsed)


__all__ = ["BodyLimit", "BodyTooLarge", "JSONRoute", "Limit", "Throttle"]
