"""The HTTP API: the webhook receiver, the admin endpoints and health.

- ``POST /events``: bucket notifications (MinIO, AWS, versitygw, RGW bodies).
  Needs the webhook token, as ``Authorization: Bearer T`` (MinIO's
  ``auth_token``) or, for stores that cannot set headers (versitygw), as
  ``?token=T`` in the webhook URL. Keys are taken as URL-encoded (AWS,
  MinIO, RGW) unless the URL says ``?keys=raw`` (versitygw). Answers 200 only
  once every event is committed to the state database; the broker is told
  afterwards.
- ``/jobs``, ``/jobs/{id}``, ``/jobs/{id}/retry``, ``/jobs/retry-failed``,
  ``/backfill``: the admin API, behind a different (admin) token.
- ``GET /healthz``: open; 200 once the service can reach its database.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import threading
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import BackgroundTasks, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from fileproc import dispatch
from fileproc.errors import BucketNotFound, FileprocError
from fileproc.events import ObjectEvent
from fileproc.intake.backfill import backfill
from fileproc.intake.notifications import BadNotification, parse_body
from fileproc.service import Service
from fileproc.state import STATUSES, DatabaseUnavailable, Job
from fileproc.tokens import Tokens

log = logging.getLogger(__name__)


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value:
        return value.strip()
    return request.query_params.get("token", "")


def _require(expected: str, request: Request) -> None:
    given = _bearer(request)
    if not given or not hmac.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(401, "missing or wrong token", headers={"WWW-Authenticate": "Bearer"})


class BackfillRequest(BaseModel):
    bucket: str
    prefix: str = ""


def create_app(service: Service, tokens: Tokens, *, sweep_seconds: float = 5.0) -> FastAPI:
    """The ASGI app. ``sweep_seconds``: how often jobs that missed the broker are re-sent."""
    stop = threading.Event()

    def sweep() -> None:
        while not stop.wait(sweep_seconds):
            try:
                dispatch.flush_pending(service)
            except FileprocError as exc:
                log.warning("re-sending pending jobs failed: %s", exc)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        threading.Thread(target=sweep, name="fileproc-sweeper", daemon=True).start()
        yield
        stop.set()

    app = FastAPI(title="fileproc", version="0.1.0", lifespan=lifespan)

    def webhook_auth(request: Request) -> None:
        _require(tokens.webhook, request)

    def admin_auth(request: Request) -> None:
        _require(tokens.admin, request)

    # Every error answers the same way: a status code and {"error": "<reason>"}.
    @app.exception_handler(FileprocError)
    def _fileproc_error(_: Request, exc: FileprocError) -> JSONResponse:
        status = 503 if isinstance(exc, DatabaseUnavailable) else 400
        return JSONResponse({"error": str(exc)}, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        service.db.check()
        return {"status": "ok"}

    @app.post("/events", dependencies=[Depends(webhook_auth)])
    async def events(request: Request, background: BackgroundTasks) -> dict[str, Any]:
        body = await request.body()
        keys = request.query_params.get("keys", "url")
        if keys not in ("url", "raw"):
            raise HTTPException(400, "keys must be 'url' (URL-encoded keys, as AWS and MinIO send) or 'raw'")
        try:
            parsed = parse_body(body, raw_keys=keys == "raw")
        except BadNotification as exc:
            log.warning("rejected a notification: %s", exc)
            raise HTTPException(400, str(exc)) from exc
        if parsed.test:
            return {"test": True}
        for reason in parsed.rejected:
            log.warning("rejected a notification record: %s", reason)
        # Committed before answering, so the sender's own retry covers any outage of ours.
        results = await run_in_threadpool(_record_all, service, parsed.events)
        background.add_task(_send_all, service, [item.job for item in results if item.created])
        return {"recorded": len(parsed.events), "jobs": [item.job.id for item in results],
                "rejected": parsed.rejected}

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

    return app


def _record_all(service: Service, events: list[ObjectEvent]) -> list[dispatch.Dispatched]:
    return [item for event in events for item in dispatch.submit(service, event, send=False)]


def _send_all(service: Service, jobs: list[Job]) -> None:
    for job in jobs:
        dispatch.enqueue(service, job)
