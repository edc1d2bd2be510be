"""The HTTP API's app: the routers of :mod:`fileproc.web` composed, and what runs while it serves.

- ``POST /events`` (:mod:`fileproc.web.events`): bucket notifications (MinIO,
  AWS, versitygw, RGW bodies), for the webhook token. Answers 200 only once
  every event a pipeline matches is committed to the state database
  (:func:`fileproc.intake.webhook.receive`); the broker is told afterwards.
  A body over ``api.max_body_bytes`` or with more than ``api.max_records``
  records gets 413 and nothing of it is recorded; a record naming an
  impossible key is refused with its reason (and the rest recorded); 503
  with ``Retry-After`` when the database is busy or gone.
- ``/jobs``, ``/jobs/{id}``, ``/jobs/{id}/retry``, ``/jobs/retry-failed``,
  ``/backfill``, ``/why``, ``/search``, ``/stats`` (the receiver's counters)
  and ``/openapi.json``: the admin API (:mod:`fileproc.web.admin`), behind
  the admin token, in the Authorization header only.
- ``GET /healthz``: open; 200 once the service can reach its database.
- ``GET /metrics`` (:mod:`fileproc.web.metrics`): Prometheus metrics, for the admin token or ``metrics.token``.
- ``/functions/...`` (:mod:`fileproc.web.functions`): deployed user functions invoked over HTTP.
- ``/fn/NAME/...`` (:mod:`fileproc.web.function_urls`): function URLs, Lambda's, any method; a body up to
  ``api.max_body_bytes``.
- ``/ui``: the web dashboard (:mod:`fileproc.web.ui`), logged in with the admin token; the API's
  docs too (``/docs`` and ``/redoc`` lead there: a browser cannot send the header).

Every request body is counted against its route's limit as it arrives
(:class:`fileproc.web.bounds.BodyLimit`: 413 past it, nothing more read) and
every JSON body parsed by :func:`fileproc.jsonbody.loads` (400 with the reason
when it does not parse or nests too deep). Every error answers with a status
code and ``{"error": "<reason>"}`` (:mod:`fileproc.web.responses`).

The routes take what they work with from ``app.state``: ``service``,
``tokens``, ``counters`` (the receiver's), ``committer`` (while the app
runs) and ``metrics``. The app of a ``fileproc api --workers N`` process is
built by :func:`fileproc.app.app_from_settings`.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import FastAPI, Request
from starlette.types import Receive, Scope, Send

from fileproc.intake.webhook import Committer, Counters
from fileproc.metrics import Metrics, SharedCounters
from fileproc.runtime.outbox import Relay
from fileproc.service import Service
from fileproc.tokens import Tokens
from fileproc.web import admin, events, function_urls, functions, metrics, streams, ui
from fileproc.web.bounds import BodyLimit, JSONRoute, Limit
from fileproc.web.functions import INVOKE_BODY
from fileproc.web.responses import add_error_handlers, error_response
from fileproc.web.search import start_indexer

SMALL_BODY = Limit(16 * 1024, "a form or a small JSON body")
"""The body limit of every route without one of its own: the dashboard's forms (a login is a token and
a page's address), the admin API's small JSON bodies."""


class WebApp(FastAPI):
    """FastAPI, with ``POST /events`` answered before the framework's middleware and routing.

    At thousands of notifications a second on two cores, FastAPI's per-request
    machinery (middleware layers, routing, dependency resolution) cost as much
    as recording the events; the webhook needs none of it. Every request's
    body, the webhook's too, is counted against its route's limit first.
    """

    bounded: BodyLimit
    committer: Committer | None = None
    """The committer every run of the app uses; None: a new one for each (with the app's counters)."""
    answer_seconds: deque[float]
    """How long the last answers to ``POST /events`` took, from request to answer (``GET /stats``)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.bounded(scope, receive, send)

    async def answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/events" and scope["method"] == "POST":
            started = time.perf_counter()
            scope["app"] = self
            try:
                response = await events.post_events(Request(scope, receive))
            except Exception as exc:  # answered like the framework would: status and {"error": ...}
                response = error_response(exc, self.state.counters, "POST /events")
            await response(scope, receive, send)
            self.answer_seconds.append(time.perf_counter() - started)
            return
        await super().__call__(scope, receive, send)

    def answer_ms(self) -> dict[str, float]:
        """p50, p99 and max of the recent answer times, in milliseconds."""
        times = sorted(self.answer_seconds)
        if not times:
            return {}
        return {"answer_ms_p50": round(1000 * times[len(times) // 2], 1),
                "answer_ms_p99": round(1000 * times[max(0, int(len(times) * 0.99) - 1)], 1),
                "answer_ms_max": round(1000 * times[-1], 1)}


@dataclass(frozen=True)
class RouteLimits:
    """The body limit of each route (:class:`BodyLimit`'s ``limit_for``); a webhook body refused is counted."""

    events: Limit
    counters: Counters

    def limit_for(self, scope: Scope) -> Limit:
        path = scope["path"]
        if path == "/events" or path.startswith((function_urls.PREFIX, "/streams/")):  # URLs, records: as large
            return self.events
        if path.startswith("/functions/"):
            return INVOKE_BODY
        return SMALL_BODY

    def refused(self, scope: Scope) -> None:
        if scope["path"] == "/events":
            self.counters.add(too_large=1)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """While the app runs, its process records webhook events (the committer), relays due steps to the
    broker (the outbox) and, with search on, indexes. Started here, not at import: with ``--workers``
    each process has its own threads."""
    assert isinstance(app, WebApp)
    service: Service = app.state.service
    app.state.committer = app.committer or Committer(service, counters=app.state.counters)
    app.state.committer.start()
    relay = Relay(service).start()
    indexer = start_indexer(service)
    app.state.search_index = indexer.index if indexer else None
    yield
    if indexer is not None:
        indexer.stop()
    relay.stop()
    app.state.committer.stop()


def create_app(service: Service, tokens: Tokens, *, committer: Committer | None = None) -> FastAPI:
    """The ASGI app for ``service``, open to ``tokens``. ``committer``: one with other bounds (tests).

    Example::

        uvicorn.run(create_app(service, load_tokens(service.settings)))
    """
    counters = committer.counters if committer else SharedCounters()
    # FastAPI's own docs routes are off: the docs are the dashboard's (fileproc.web.admin, fileproc.web.ui.docs).
    app = WebApp(title="fileproc", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                 openapi_url=None)
    app.router.route_class = JSONRoute  # every JSON body through fileproc.jsonbody.loads
    app.committer = committer
    app.answer_seconds = deque(maxlen=4096)
    app.state.service = service
    app.state.tokens = tokens
    app.state.counters = counters
    app.state.metrics = Metrics(service, counters)
    limits = RouteLimits(Limit(service.settings.api.max_body_bytes, "api.max_body_bytes"), counters)
    app.bounded = BodyLimit(app.answer, limits.limit_for, limits.refused)
    add_error_handlers(app)
    for router in (admin.public, events.router, admin.router, metrics.router, streams.router):
        app.include_router(router)
    ui.install(app, service, tokens)  # /ui: the web dashboard, behind the admin token
    app.include_router(functions.router)  # deployed user functions
    app.include_router(function_urls.router)  # their URLs: /fn/NAME/...
    return app


__all__ = ["SMALL_BODY", "RouteLimits", "WebApp", "create_app", "lifespan"]
