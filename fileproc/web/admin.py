"""The admin API: jobs, retries, backfill, "why", search and the schema, behind the admin token; health, open.

The admin token goes in the Authorization header only (a URL ends up in
proxies' logs). A browser cannot send that header, so the API's docs pages
are the dashboard's, for its session (``/docs`` and ``/redoc`` lead to
``/ui/docs`` and ``/ui/redoc``: :mod:`fileproc.web.ui`).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import BaseModel

from fileproc import dispatch
from fileproc.errors import BucketNotFound
from fileproc.intake.backfill import backfill
from fileproc.state import STATUSES
from fileproc.web import auth
from fileproc.web.bounds import JSONRoute
from fileproc.web.context import ServiceDep
from fileproc.web.search import search_index

# The docstrings of the routes in the schema are their descriptions there: the routes below keep
# the ones they have always had (and comments for the rest).

public = APIRouter(route_class=JSONRoute)
"""The routes open to anyone: health, and the docs pages' redirects."""

router = APIRouter(route_class=JSONRoute, dependencies=[Depends(auth.admin)])
"""The routes behind the admin token."""


class BackfillRequest(BaseModel):
    bucket: str
    prefix: str = ""


@public.get("/healthz")
def healthz(service: ServiceDep) -> dict[str, str]:
    # 200 once this process can reach its database.
    service.db.check()
    return {"status": "ok"}


@public.get("/docs", include_in_schema=False)
def docs() -> Response:
    return RedirectResponse("/ui/docs", status_code=303)


@public.get("/redoc", include_in_schema=False)
def redoc() -> Response:
    return RedirectResponse("/ui/redoc", status_code=303)


@router.get("/openapi.json", include_in_schema=False)
def openapi(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@router.get("/jobs")
def jobs(service: ServiceDep, status: Annotated[str | None, Query()] = None, limit: int = 100) -> list[dict[str, Any]]:
    if status and status not in STATUSES:
        raise HTTPException(400, f"unknown status {status!r}; one of {', '.join(STATUSES)}")
    return [job.to_dict() for job in service.db.list_jobs(status, limit)]


@router.get("/jobs/{job_id}")
def job(service: ServiceDep, job_id: int) -> dict[str, Any]:
    found = service.db.get_job(job_id)
    if found is None:
        raise HTTPException(404, f"no job {job_id}")
    return found.to_dict()


@router.post("/jobs/retry-failed")
def retry_failed(service: ServiceDep) -> dict[str, Any]:
    return {"retried": [found.id for found in dispatch.retry_failed(service)]}


@router.post("/jobs/{job_id}/retry")
def retry(service: ServiceDep, job_id: int) -> dict[str, Any]:
    found = dispatch.retry(service, job_id)
    if found is None:
        raise HTTPException(404, f"no job {job_id}")
    return {"id": job_id, "status": found.status}


@router.post("/backfill")
def run_backfill(service: ServiceDep, request: BackfillRequest) -> dict[str, Any]:
    try:
        report = backfill(service, request.bucket, request.prefix)
    except BucketNotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    return report.to_dict()


@router.get("/why")
def why(service: ServiceDep, bucket: str, key: str) -> dict[str, Any]:
    """Why was bucket/key (not) processed? As ``fileproc why --json``."""
    from fileproc.why import explain

    return explain(service, bucket, key).to_dict()


@router.get("/search")
def search(request: Request, q: str = "", bucket: str | None = None, type: str | None = None,
           page: Annotated[int, Query(ge=1)] = 1,
           per_page: Annotated[int, Query(ge=1, le=100)] = 10) -> dict[str, Any]:
    from fileproc.search import IndexCorrupt

    try:
        return search_index(request.app).search(q, bucket=bucket, type=type, page=page, per_page=per_page).to_dict()
    except IndexCorrupt as exc:
        raise HTTPException(503, f"{exc}; the indexer rebuilds it from storage") from exc


__all__ = ["BackfillRequest", "public", "router"]
