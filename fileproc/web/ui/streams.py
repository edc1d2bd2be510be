"""The dashboard's Streams page: each mapping, its partitions (positions, lag, counts, the last error),
its lag over the last hour, and the batches it gave up."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from fileproc.service import Service
from fileproc.state.streams import dead_letters, lag_history
from fileproc.streams.admin import status
from fileproc.web.context import ServiceDep
from fileproc.web.ui.render import page
from fileproc.web.ui.session import session_of

router = APIRouter(prefix="/ui", include_in_schema=False)

SLOTS = 12  # five minutes each: the last hour


@router.get("/streams")
async def streams(request: Request, service: ServiceDep) -> Response:
    session = session_of(request)
    found = await run_in_threadpool(_streams, service)
    return page(request, "streams.html", session, streams=found, refresh=5)


def _streams(service: Service) -> list[dict[str, Any]]:
    out = []
    for mapping in status(service):
        history = lag_history(service.db, mapping["name"])
        mapping["chart"] = lag_chart(history)
        mapping["dead_letters"] = dead_letters(service.db, mapping["name"], limit=10)
        out.append(mapping)
    return out


def lag_chart(history: list[tuple[datetime, str, int, float]], width: int = 360,
              height: int = 48) -> dict[str, Any]:
    """Bars of the highest lag (records, all partitions summed per sample) in each 5 minutes of the last hour."""
    if not history:
        return {"bars": [], "top": 0}
    now = max(at for at, *_ in history)
    totals: dict[datetime, int] = {}
    for at, _, records, _ in history:
        totals[at] = totals.get(at, 0) + records
    slots = [0] * SLOTS
    for at, records in totals.items():
        index = SLOTS - 1 - int((now - at) / timedelta(minutes=5))
        if 0 <= index < SLOTS:
            slots[index] = max(slots[index], records)
    top = max(slots) or 1
    bar = width / SLOTS
    return {"top": max(slots), "bars": [
        {"x": round(i * bar + 1, 1), "width": round(bar - 2, 1), "height": round(max(1.0, height * lag / top), 1)
         if lag else 0, "y": round(height - (height * lag / top), 1), "lag": lag, "minutes_ago": 60 - i * 5}
        for i, lag in enumerate(slots)]}


__all__ = ["lag_chart", "router"]
