"""The HTTP API: the webhook receiver, the admin endpoints and health.

- ``POST /events``: bucket notifications (MinIO, AWS, versitygw, RGW bodies).
  Needs the webhook token, as ``Authorization: Bearer T`` (MinIO's
  ``auth_token``) or, for stores that cannot set headers (versitygw), as
  ``?token=T`` in the webhook URL (the one token taken from a URL). Keys
  are taken as URL-encoded (AWS, MinIO, RGW) unless the URL says
  ``?keys=raw`` (versitygw). Answers 200 only once every event a pipeline
  matches is committed to the state database (many requests share one
  transaction: :mod:`fileproc.intake.webhook`); the broker is told
  afterwards. Events no pipeline matches are counted, not stored. A body
  over ``api.max_body_bytes`` or with more than ``api.max_records`` records
  gets 413 and nothing of it is recorded; a record naming an impossible key
  is refused with its reason (and the rest recorded); 503 with
  ``Retry-After`` when the database is busy or gone.
- ``/jobs``, ``/jobs/{id}``, ``/jobs/{id}/retry``, ``/jobs/retry-failed``,
  ``/backfill``, ``/stats`` (the receiver's counters) and ``/openapi.json``:
  the admin API, behind a different (admin) token, in the Authorization
  header only (a URL ends up in proxies' logs).
- ``GET /healthz``: open; 200 once the service can reach its database.
- ``GET /metrics``: Prometheus metrics (:mod:`fileproc.metrics`), for the admin token or ``metrics.token``.
- ``/ui``: the web dashboard (:mod:`fileproc.web.ui`), logged in with the admin token; the API's
  docs too (``/docs`` and ``/redoc`` lead there: a browser cannot send the header).

Every request body is counted against its route's limit as it arrives
(:class:`fileproc.web.bounds.BodyLimit`: 413 past it, nothing more read) and
every JSON body parsed by :func:`fileproc.jsonbody.loads` (400 with the reason
when it does not parse or nests too deep).
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from fileproc import dispatch
from fileproc.errors import BucketNotFound, FileprocError, StorageError
from fileproc.events import ObjectEvent
from fileproc.intake.backfill import backfill
from fileproc.intake.notifications import BadNotification, Parsed, TooManyRecords, parse_body
from fileproc.intake.webhook import Busy, Committer
from fileproc.metrics import METRICS_CONTENT_TYPE, Metrics, SharedCounters
from fileproc.objects import candidates, complete, needs_head
from fileproc.runtime.outbox import Relay
from fileproc.service import Service
from fileproc.state import STATUSES, DatabaseUnavailable
from fileproc.tokens import Tokens
from fileproc.web.bounds import BodyLimit, JSONRoute, Limit

log = logging.getLogger(__name__)

RETRY_AFTER = "1"
"""Seconds a sender is asked to wait before retrying a 503."""

# Bodies bigger than this are parsed off the event loop, so one big body never stalls the others.
_PARSE_INLINE_BYTES = 64 * 1024

SMALL_BODY = Limit(16 * 1024, "a form or a small JSON body")
"""The body limit of every route without one of its own: the dashboard's forms (a login is a token and
a page's address), the admin API's small JSON bodies."""


def _bearer(request: Request) -> str:
    """The token of the ``Authorization: Bearer T`` header; empty without one."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


def _require(expected: str, request: Request, *, in_url: bool = False) -> None:
    """Refuse (401) unless the Authorization header carries ``expected``; with ``in_url``, ``?token=`` may."""
    given = _bearer(request) or (request.query_params.get("token", "") if in_url else "")
    if not given or not hmac.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(401, "missing or wrong token", headers={"WWW-Authenticate": "Bearer"})


class BackfillRequest(BaseModel):
    bucket: str
    prefix: str = ""


def _json(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    # A plain Response: no response model to validate on the hot path.
    return Response(json.dumps(data, separators=(",", ":")), status_code=status, headers=headers,
                    media_type="application/json")


class _App(FastAPI):
    """FastAPI, with ``POST /events`` answered before the framework's middleware and routing.

    At thousands of notifications a second on two cores, FastAPI's per-request
    machinery (middleware layers, routing, dependency resolution) cost as much
    as recording the events; the webhook needs none of it. Every request's
    body, the webhook's too, is counted against its route's limit first.
    """

    events: tuple[Callable[[Request], Awaitable[Response]], Callable[[Exception], Awaitable[Response]]] | None = None
    bounded: BodyLimit
    answer_seconds: deque[float]
    """How long the last answers to ``POST /events`` took, from request to answer (``GET /stats``)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.bounded(scope, receive, send)

    async def answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (self.events is not None and scope["type"] == "http" and scope["path"] == "/events"
                and scope["method"] == "POST"):
            started = time.perf_counter()
            scope["app"] = self
            handle, on_error = self.events
            try:
                response = await handle(Request(scope, receive))
            except Exception as exc:  # answered like the framework would: status and {"error": ...}
                response = await on_error(exc)
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


def create_app(service: Service, tokens: Tokens, *, committer: Committer | None = None) -> FastAPI:
    """The ASGI app; while it runs, its process records webhook events (the committer) and
    relays due steps to the broker (the outbox). ``committer``: one with other bounds (tests)."""
    counters = committer.counters if committer else SharedCounters()
    settings = service.settings
    pipelines = list(service.pipelines.values())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Started here, not at import: with `--workers` each process has its own threads.
        app.state.committer = committer or Committer(service, counters=counters)
        app.state.committer.start()
        relay = Relay(service).start()
        indexer = _start_indexer(service)
        app.state.search_index = indexer.index if indexer else None
        yield
        if indexer is not None:
            indexer.stop()
        relay.stop()
        app.state.committer.stop()

    # FastAPI's own docs routes are off: the docs are the dashboard's (see the routes below).
    app = _App(title="fileproc", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
               openapi_url=None)
    app.router.route_class = JSONRoute  # every JSON body through fileproc.jsonbody.loads
    app.answer_seconds = deque(maxlen=4096)
    app.state.counters = counters
    app.state.service = service

    from fileproc.serverless.http import INVOKE_BODY

    events_body = Limit(settings.api.max_body_bytes, "api.max_body_bytes")

    def body_limit(scope: Scope) -> Limit:
        path = scope["path"]
        if path == "/events":
            return events_body
        if path.startswith("/functions/"):
            return INVOKE_BODY
        return SMALL_BODY

    def body_refused(scope: Scope) -> None:
        if scope["path"] == "/events":
            counters.add(too_large=1)

    app.bounded = BodyLimit(app.answer, body_limit, body_refused)

    def admin_auth(request: Request) -> None:
        _require(tokens.admin, request)

    # Every error answers the same way: a status code and {"error": "<reason>"}.
    @app.exception_handler(FileprocError)
    def _fileproc_error(_: Request, exc: FileprocError) -> Response:
        if isinstance(exc, DatabaseUnavailable | Busy | StorageError):
            # Ours to fix, not the sender's: ask it to come back (a retrying store retries).
            counters.add(busy=1)
            return _json({"error": str(exc)}, 503, {"Retry-After": RETRY_AFTER})
        if isinstance(exc, TooManyRecords):
            counters.add(too_large=1)
            return _json({"error": str(exc)}, 413)
        return _json({"error": str(exc)}, 400)

    @app.exception_handler(StarletteHTTPException)
    def _http_error(_: Request, exc: StarletteHTTPException) -> Response:
        return _json({"error": exc.detail}, exc.status_code, exc.headers)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        service.db.check()
        return {"status": "ok"}

    async def events(request: Request) -> Response:
        _require(tokens.webhook, request, in_url=True)  # versitygw cannot set headers
        keys = request.query_params.get("keys", "url")
        if keys not in ("url", "raw"):
            raise HTTPException(400, "keys must be 'url' (URL-encoded keys, as AWS and MinIO send) or 'raw'")
        body = await request.body()  # at most api.max_body_bytes: app.bounded counts it

        def parse() -> Parsed:
            return parse_body(body, raw_keys=keys == "raw", max_records=settings.api.max_records)

        try:
            parsed = await run_in_threadpool(parse) if len(body) > _PARSE_INLINE_BYTES else parse()
        except BadNotification as exc:
            log.warning("rejected a notification: %s", exc)
            raise
        if parsed.test:
            return _json({"test": True})
        for reason in parsed.rejected:
            log.warning("rejected a notification record: %s", reason)
        # Events no pipeline can take are counted, never written; those a notification left
        # incomplete (no eTag, size 0) are completed from a HEAD, off the event loop.
        wanted: list[ObjectEvent] = []
        incomplete: list[ObjectEvent] = []
        for event in parsed.events:
            found = candidates(pipelines, event)
            if found:
                (incomplete if needs_head(event, pipelines, found) else wanted).append(event)
        counters.add(requests=1, received=len(parsed.events) + len(parsed.rejected), rejected=len(parsed.rejected),
                     unmatched=len(parsed.events) - len(wanted) - len(incomplete))
        if incomplete:
            completed = await run_in_threadpool(complete, service.storage, pipelines, incomplete)
            counters.add(dropped=len(incomplete) - len(completed))
            wanted += completed
        # Committed before answering, so the sender's own retry covers any outage of ours.
        results = await request.app.state.committer.record(wanted)
        return _json({"recorded": len(parsed.events), "jobs": [item.job.id for item in results],
                      "rejected": parsed.rejected})

    async def events_error(exc: Exception) -> Response:
        if isinstance(exc, FileprocError):
            return _fileproc_error(None, exc)  # type: ignore[arg-type]
        if isinstance(exc, StarletteHTTPException):
            return _http_error(None, exc)  # type: ignore[arg-type]
        log.exception("POST /events failed")
        return _json({"error": "internal error"}, 500)

    app.router.add_route("/events", events, methods=["POST"], include_in_schema=False)
    app.events = (events, events_error)

    @app.get("/stats", dependencies=[Depends(admin_auth)])
    def stats(request: Request) -> dict[str, Any]:
        """What the receiver saw since this process started."""
        committer_now: Committer = request.app.state.committer
        return {**counters.to_dict(), "backlog": committer_now.backlog, **app.answer_ms()}

    @app.get("/openapi.json", dependencies=[Depends(admin_auth)], include_in_schema=False)
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    # A browser cannot send the header, and the token must not go in a URL: the docs pages are the
    # dashboard's, for its session (/ui/docs, /ui/redoc; fileproc.web.ui).
    @app.get("/docs", include_in_schema=False)
    def docs() -> Response:
        return RedirectResponse("/ui/docs", status_code=303)

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> Response:
        return RedirectResponse("/ui/redoc", status_code=303)

    @app.get("/jobs", dependencies=[Depends(admin_auth)])
    def jobs(status: Annotated[str | None, Query()] = None, limit: int = 100) -> list[dict[str, Any]]:
        if status and status not in STATUSES:
            raise HTTPException(400, f"unknown status {status!r}; one of {', '.join(STATUSES)}")
        return [job.to_dict() for job in service.db.list_jobs(status, limit)]

    @app.get("/jobs/{job_id}", dependencies=[Depends(admin_auth)])
    def job(job_id: int) -> dict[str, Any]:
        found = service.db.get_job(job_id)
        if found is None:
            raise HTTPException(404, f"no job {job_id}")
        return found.to_dict()

    @app.post("/jobs/retry-failed", dependencies=[Depends(admin_auth)])
    def retry_failed() -> dict[str, Any]:
        ids = service.db.failed_job_ids()
        for job_id in ids:
            dispatch.retry(service, job_id)
        return {"retried": ids}

    @app.post("/jobs/{job_id}/retry", dependencies=[Depends(admin_auth)])
    def retry(job_id: int) -> dict[str, Any]:
        found = dispatch.retry(service, job_id)
        if found is None:
            raise HTTPException(404, f"no job {job_id}")
        return {"id": job_id, "status": found.status}

    @app.post("/backfill", dependencies=[Depends(admin_auth)])
    def run_backfill(request: BackfillRequest) -> dict[str, Any]:
        try:
            report = backfill(service, request.bucket, request.prefix)
        except BucketNotFound as exc:
            raise HTTPException(404, str(exc)) from exc
        return report.to_dict()

    @app.get("/why", dependencies=[Depends(admin_auth)])
    def why(bucket: str, key: str) -> dict[str, Any]:
        """Why was bucket/key (not) processed? As ``fileproc why --json``."""
        from fileproc.why import explain

        return explain(service, bucket, key).to_dict()

    metrics = Metrics(service, counters)
    metrics_token = settings.metrics.token.get_secret_value()

    @app.get("/metrics", include_in_schema=False)
    def prometheus_metrics(request: Request) -> Response:
        """Prometheus text format; the metrics token (``metrics.token``) or the admin token."""
        given = _bearer(request)
        if not (metrics_token and given and hmac.compare_digest(given.encode(), metrics_token.encode())):
            _require(tokens.admin, request)
        return Response(metrics.render(), media_type=METRICS_CONTENT_TYPE)

    @app.get("/search", dependencies=[Depends(admin_auth)])
    def search(q: str = "", bucket: str | None = None, type: str | None = None,
               page: Annotated[int, Query(ge=1)] = 1,
               per_page: Annotated[int, Query(ge=1, le=100)] = 10) -> dict[str, Any]:
        from fileproc.search import IndexCorrupt

        try:
            return search_index(app).search(q, bucket=bucket, type=type, page=page, per_page=per_page).to_dict()
        except IndexCorrupt as exc:
            raise HTTPException(503, f"{exc}; the indexer rebuilds it from storage") from exc

    from fileproc.web.ui import install as install_dashboard

    install_dashboard(app, service, tokens)  # /ui: the web dashboard, behind the admin token

    from fileproc.serverless.http import add_function_routes  # deployed user functions

    add_function_routes(app, service, admin_auth)
    return app


def search_index(app: FastAPI) -> Any:
    """This process's search index: its indexer's, or opened once for searching (``GET /search``, ``/ui``)."""
    from fileproc.search.whoosh import WhooshIndex

    index = getattr(app.state, "search_index", None)
    if index is None:
        index = app.state.search_index = WhooshIndex(app.state.service.settings.search_dir, read_ahead=True)
    return index


def _start_indexer(service: Service) -> Any:
    """This host's search indexer, if search is on and a pipeline indexes (see fileproc.search.indexer)."""
    if not service.settings.search.enabled:
        return None
    if not any(step.function == "index" for p in service.pipelines.values() for step in p.steps):
        return None
    from fileproc.search.indexer import Indexer

    return Indexer(service).start()


def app_from_settings() -> FastAPI:
    """The app for settings read from ``FILEPROC_CONFIG`` and the environment.

    For uvicorn's ``--workers`` (each worker process builds its own app):
    ``uvicorn --factory fileproc.api:app_from_settings --workers 2``. Several
    processes must share explicit tokens (``api.webhook_token``,
    ``api.admin_token``) or the data folder that keeps the generated ones.
    """
    from fileproc.config import load_settings
    from fileproc.service import setup_logging
    from fileproc.tokens import load_tokens

    settings = load_settings()
    setup_logging(settings)
    return create_app(Service(settings), load_tokens(settings))
