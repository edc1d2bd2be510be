"""The dashboard's other pages: the overview, pipelines (and a key tested against them), search, usage and "why"."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from fileproc.events import ObjectEvent
from fileproc.rules import Pipeline, render_key, verdicts
from fileproc.service import Service
from fileproc.web.context import ServiceDep
from fileproc.web.search import search_index
from fileproc.web.ui.charts import bars
from fileproc.web.ui.health import health
from fileproc.web.ui.overview import chart, overview
from fileproc.web.ui.render import page
from fileproc.web.ui.session import session_of

SEARCH_PAGE = 20
EVENT_NAMES = ("s3:ObjectCreated:Put", "s3:ObjectCreated:Post", "s3:ObjectCreated:Copy",
               "s3:ObjectCreated:CompleteMultipartUpload", "s3:ObjectRemoved:Delete")
WINDOWS = {"1d": timedelta(days=1), "7d": timedelta(days=7), "30d": timedelta(days=30), "all": None}
"""The usage page's time windows."""

router = APIRouter(prefix="/ui", include_in_schema=False)


@router.get("")
def home(request: Request, service: ServiceDep) -> Response:
    session = session_of(request)
    found = overview(service)
    return page(request, "overview.html", session, o=found, bars=chart(found), h=health(service), refresh=5)


@router.get("/pipelines")
def pipelines(request: Request, service: ServiceDep, target: str = "", event: str = EVENT_NAMES[0],
              size: str = "") -> Response:
    session = session_of(request)
    tested, problem = None, None
    if target:
        bucket, _, key = target.strip().lstrip("/").partition("/")
        if not bucket or not key:
            problem = "Give BUCKET/KEY, e.g. uploads/pets/cat.jpg"
        elif size and not size.isdigit():
            problem = "The size is a number of bytes."
        else:
            probe = ObjectEvent(bucket=bucket, key=key, event_name=event, size=int(size) if size else None,
                                source="match")
            tested = tested_against(list(service.pipelines.values()), probe)
    return page(request, "pipelines.html", session, target=target, event=event, size=size, tested=tested,
                problem=problem, event_names=EVENT_NAMES, queue_of=queue_of(service), dumps=json.dumps)


def tested_against(pipelines: list[Pipeline], probe: ObjectEvent) -> list[dict[str, Any]]:
    """What `fileproc match` decides for ``probe``, with the same functions: each pipeline's verdict and output."""
    bucket, key = probe.bucket, probe.key
    return [{"pipeline": p, "reason": reason,
             "output": f"{p.output.bucket.replace('{bucket}', bucket)}/"
                       + render_key(p.output.key, pipeline=p.name, bucket=bucket, key=key, name="NAME")}
            for p, reason in verdicts(pipelines, probe)]


def queue_of(service: Service) -> Any:
    def queue(step: Any) -> str:
        try:
            return service.queue_for(step)
        except Exception:  # a function that no longer loads: say so on the page, never fail it
            return "?"
    return queue


@router.get("/search")
def search(request: Request, q: str = "", bucket: str = "", type: str = "",
           page_number: Annotated[int, Query(alias="page", ge=1)] = 1) -> Response:
    from fileproc.search import IndexCorrupt

    session = session_of(request)
    found, problem = None, None
    if q.strip():
        try:
            found = search_index(request.app).search(q, bucket=bucket or None, type=type or None, page=page_number,
                                                     per_page=SEARCH_PAGE)
        except IndexCorrupt as exc:
            problem = f"{exc}; the indexer rebuilds it from storage"
    return page(request, "search.html", session, q=q, bucket=bucket, type=type, found=found,
                problem=problem, page_number=page_number, per_page=SEARCH_PAGE)


@router.get("/usage")
def usage(request: Request, service: ServiceDep, by: str = "function", since: str = "7d") -> Response:
    from fileproc.state.usage import GROUPINGS, Usage, billed_attempts, summarise

    session = session_of(request)
    by = by if by in GROUPINGS else "function"
    since = since if since in WINDOWS else "7d"
    window = WINDOWS[since]
    prices = {"price_per_request": service.settings.usage.price_per_request,
              "price_per_gb_second": service.settings.usage.price_per_gb_second}
    rows = billed_attempts(service.db, since=datetime.now(UTC) - window if window else None)
    groups = summarise(rows, by, **prices)
    days = summarise(rows, "day", **prices)
    total = Usage("total")
    for g in groups:
        total.requests, total.cold_starts, total.errors = (total.requests + g.requests,
                                                           total.cold_starts + g.cold_starts, total.errors + g.errors)
        total.billed_ms, total.gb_seconds, total.cost = (total.billed_ms + g.billed_ms, total.gb_seconds + g.gb_seconds,
                                                         total.cost + g.cost)
    graph = bars([float(d.requests) for d in days], [d.group for d in days], label="requests by day (UTC)",
                 unit="requests", css="bar-succeeded") if days else None
    cost_graph = bars([d.cost for d in days], [d.group for d in days], label="cost by day (UTC), $",
                      unit="$", css="bar-run") if days else None
    return page(request, "usage.html", session, groups=groups, by=by, since=since, groupings=GROUPINGS,
                windows=list(WINDOWS), settings=service.settings.usage, total=total, days=days, graph=graph,
                cost_graph=cost_graph)


@router.get("/why")
def why(request: Request, service: ServiceDep, target: str = "") -> Response:
    from fileproc.why import explain

    session = session_of(request)
    bucket, _, key = target.strip().lstrip("/").partition("/")
    found = explain(service, bucket, key) if bucket and key else None
    return page(request, "why.html", session, target=target, found=found,
                problem="Give BUCKET/KEY, e.g. uploads/pets/cat.jpg" if target and not found else None)


__all__ = ["EVENT_NAMES", "SEARCH_PAGE", "home", "pipelines", "router", "search", "tested_against", "usage", "why"]
