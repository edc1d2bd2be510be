"""The dashboard's Functions: the list, and one page per function (the Lambda console's, in short).

A function's page shows its monitoring over 1 h, 24 h or 7 d
(:mod:`.monitoring`, drawn by :mod:`.charts`), its versions and aliases
with a rollback (:func:`fileproc.state.deployments.set_alias`, as
``fileproc functions rollback``), its configuration, a test-invoke form
with saved events (:mod:`fileproc.state.saved_events`; the invocation
itself is :func:`fileproc.serverless.invocations.submit`, as ``POST
/functions/NAME/invoke?mode=async``), its recent invocations with their
logs, and its dead letters with a redrive (:func:`fileproc.serverless.destinations.redrive`,
as ``fileproc retry --dead-letters``). Built-in and registered functions
have the same page without versions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response

from fileproc.errors import FileprocError, FunctionNotFound, ObjectNotFound
from fileproc.serverless import invocations
from fileproc.serverless.destinations import redrive
from fileproc.service import Service
from fileproc.state import saved_events as saved
from fileproc.state.deployments import LIVE, FunctionVersion, dead_letters, list_versions, set_alias
from fileproc.state.function_activity import FunctionSummary, attempts_since, recent_invocations, summaries
from fileproc.web.context import ServiceDep
from fileproc.web.ui.charts import bars, lines
from fileproc.web.ui.monitoring import WINDOWS, monitoring
from fileproc.web.ui.render import page
from fileproc.web.ui.session import Session, form_of, session_of

router = APIRouter(prefix="/ui", include_in_schema=False)

EVENT_NAME = r"^[A-Za-z0-9][\w.-]{0,63}$"
RECENT = 15


@dataclass
class Row:
    """One function in the list."""

    name: str
    kind: str  # deployed or built-in
    live: FunctionVersion | None
    aliases: dict[str, int]
    memory_mb: int
    timeout: float
    concurrency: int | None
    versions: int
    ran: FunctionSummary  # its last day


def function_rows(service: Service) -> list[Row]:
    """Every deployed function, then every registered one, with its last day's invocations and errors."""
    ran = summaries(service.db, datetime.now(UTC) - timedelta(days=1))
    deployed: dict[str, list[FunctionVersion]] = {}
    for version in list_versions(service.db):
        deployed.setdefault(version.function, []).append(version)
    rows = []

    def day(name: str) -> FunctionSummary:
        return ran.get(name) or FunctionSummary(name, None, 0, 0)

    for name, versions in sorted(deployed.items()):
        live = next((v for v in versions if LIVE in v.aliases), versions[-1])
        rows.append(Row(name, "deployed", live, {a: v.version for v in versions for a in v.aliases}, live.memory_mb,
                        live.timeout, live.concurrency, len(versions), day(name)))
    for name, spec in sorted(service.functions.registry.specs().items()):
        if name in deployed:
            continue
        rows.append(Row(name, "built-in", None, {}, spec.memory_mb, spec.timeout, spec.concurrency, 0, day(name)))
    return rows


@router.get("/functions")
async def functions_list(request: Request, service: ServiceDep) -> Response:
    session = session_of(request)
    rows = await run_in_threadpool(function_rows, service)
    return page(request, "functions.html", session, rows=rows, refresh=10)


def _details(service: Service, name: str, window: str) -> dict[str, Any] | None:
    versions = list_versions(service.db, name)
    spec = service.functions.registry.specs().get(name)
    history = recent_invocations(service.db, name, RECENT)
    if not versions and spec is None and not history:
        return None
    length, _ = WINDOWS[window]
    found = monitoring(attempts_since(service.db, name, datetime.now(UTC) - length), window)
    labels = found.labels
    charts = {
        "invocations": bars(found.series("invocations"), labels, label=f"invocations per slot, last {window}",
                            unit="invocations", css="bar-succeeded"),
        "errors": bars(found.series("errors"), labels, label=f"errors per slot, last {window}", unit="errors",
                       css="bar-failed"),
        "throttles": bars(found.series("throttles"), labels, label=f"throttles per slot, last {window}",
                          unit="throttles", css="bar-lag"),
        "duration": lines(found.percentiles(), labels, label=f"duration p50, p95 and p99 per slot, last {window}",
                          unit="ms"),
        "concurrent": bars(found.series("concurrent"), labels,
                           label=f"most concurrent executions per slot, last {window}", unit="at once",
                           css="bar-run"),
        "cold_starts": bars(found.series("cold_starts"), labels, label=f"cold starts per slot, last {window}",
                            unit="cold starts", css="bar-skipped"),
    }
    live = next((v for v in versions if LIVE in v.aliases), versions[-1] if versions else None)
    return {"name": name, "versions": list(reversed(versions)), "live": live, "spec": spec, "history": history,
            "monitoring": found, "charts": charts, "letters": dead_letters(service.db, name),
            "events": saved.saved_events(service.db, name)}


@router.get("/functions/{name}")
async def function_page(request: Request, service: ServiceDep, name: str, window: str = "1h", event: str = "",
                        note: str = "") -> Response:
    session = session_of(request)
    return await _render(request, service, session, name, window, event=event, note=note)


async def _render(request: Request, service: Service, session: Session, name: str, window: str, *, event: str = "",
                  note: str = "", problem: str = "", text: str | None = None, status: int = 200) -> Response:
    window = window if window in WINDOWS else "1h"
    found = await run_in_threadpool(_details, service, name, window)
    if found is None:
        return page(request, "message.html", session, 404, title=f"No function {name}",
                    message="No function of this name is deployed or registered, and none ran.")
    chosen = next((e for e in found["events"] if e.name == event), found["events"][0] if found["events"] else None)
    if text is None:
        text = json.dumps(chosen.event, indent=2) if chosen else _sample_event(found["history"])
    return page(request, "function.html", session, status, f=found, window=window, windows=list(WINDOWS),
                chosen=chosen, event_text=text, note=note, problem=problem, refresh=5, event_name=EVENT_NAME[1:-1])


def _sample_event(history: list[dict[str, Any]]) -> str:
    """An S3 event for the last object the function ran on (or a placeholder to edit)."""
    last = next((h for h in history if h["bucket"] and not str(h["pipeline"]).startswith(("_event.", "stream:"))),
                None)
    bucket, key = (last["bucket"], last["key"]) if last else ("uploads", "path/to/object.jpg")
    return json.dumps({"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                                    "s3": {"bucket": {"name": bucket}, "object": {"key": key}}}]}, indent=2)


def _back(name: str, **query: str) -> RedirectResponse:
    wanted = {k: v for k, v in query.items() if v}
    return RedirectResponse(f"/ui/functions/{name}" + (f"?{urlencode(wanted)}" if wanted else ""), status_code=303)


@router.post("/functions/{name}/rollback")
async def rollback(request: Request, service: ServiceDep, name: str) -> Response:
    session = session_of(request)
    fields = await form_of(request, session)
    version = fields.get("version", "")
    if not version.isdigit():
        return await _render(request, service, session, name, "1h", problem="Choose a version.", status=400)
    try:
        await run_in_threadpool(set_alias, service.db, name, LIVE, int(version))
    except FunctionNotFound as exc:
        return await _render(request, service, session, name, "1h", problem=str(exc), status=404)
    return _back(name, note=f"{LIVE} is now version {version}; workers follow within "
                            f"{service.settings.functions.alias_seconds:g} s.")


@router.post("/functions/{name}/invoke")
async def test_invoke(request: Request, service: ServiceDep, name: str) -> Response:
    """Save the event (``save`` with a name) or run the function on it once, asynchronously, then follow its job."""
    import re

    from fileproc.web.functions import InvokeRequest, target

    session = session_of(request)
    fields = await form_of(request, session)
    text = fields.get("event", "")
    try:
        event = json.loads(text)
        if not isinstance(event, dict):
            raise ValueError("not an object")
    except ValueError as exc:
        return await _render(request, service, session, name, "1h", text=text, status=400,
                             problem=f"The event is not a JSON object: {exc}")
    if fields.get("action") == "save":
        label = fields.get("name", "").strip()
        if not re.match(EVENT_NAME, label):
            return await _render(request, service, session, name, "1h", text=text, status=400,
                                 problem="Name the event: letters, digits, '.', '-' and '_', at most 64.")
        await run_in_threadpool(saved.save_event, service.db, name, label, event)
        return _back(name, event=label, note=f"Saved the test event {label}.")
    try:
        bucket, key = target(InvokeRequest(event=event))
        job = await run_in_threadpool(invocations.submit, service, name, bucket, key, mode="async")
    except (FunctionNotFound, ObjectNotFound) as exc:
        return await _render(request, service, session, name, "1h", text=text, status=404, problem=str(exc))
    except FileprocError as exc:
        return await _render(request, service, session, name, "1h", text=text, status=503,
                             problem=f"Not invoked: {exc}")
    except HTTPException as exc:  # target() refuses an event that names no object
        return await _render(request, service, session, name, "1h", text=text, status=400, problem=str(exc.detail))
    return RedirectResponse(f"/ui/jobs/{job.id}", status_code=303)


@router.post("/functions/{name}/events/delete")
async def delete_event(request: Request, service: ServiceDep, name: str) -> Response:
    fields = await form_of(request, session_of(request))
    label = fields.get("name", "")
    await run_in_threadpool(saved.delete_event, service.db, name, label)
    return _back(name, note=f"Deleted the test event {label}.")


@router.post("/functions/{name}/redrive")
async def redrive_letters(request: Request, service: ServiceDep, name: str) -> Response:
    """Redrive one dead letter (``one``), the selected ones (``letter``, repeated) or all (``all``)."""
    session = session_of(request)
    fields = await form_of(request, session)
    chosen = parse_qs((await request.body()).decode("utf-8", "replace")).get("letter", [])
    waiting = await run_in_threadpool(dead_letters, service.db, name)
    if fields.get("all"):
        letters = waiting
    else:
        wanted = {int(v) for v in ([fields["one"]] if fields.get("one") else chosen) if v.isdigit()}
        letters = [letter for letter in waiting if letter["id"] in wanted]
    if not letters:
        return _back(name, note="No dead letter chosen (or they were redriven already).")
    done = await run_in_threadpool(redrive, service, letters)
    return _back(name, note=f"Redrove {len(done)} dead letter(s): job(s) "
                            + ", ".join(f"#{letter['job']}" for letter, _ in done) + " queued again.")


__all__ = ["Row", "delete_event", "function_page", "function_rows", "functions_list", "redrive_letters", "rollback",
           "router", "test_invoke"]
