"""The web dashboard at ``/ui``: overview, jobs, a job, pipelines and "why", behind the admin token.

Server-rendered (Jinja2) over the functions the CLI uses: :mod:`fileproc.dispatch`
for retries, :class:`~fileproc.state.Database` for jobs, :mod:`fileproc.rules`
for matching, :mod:`fileproc.why` and :mod:`fileproc.metrics` for the rest.
Its CSS and script are served from ``/ui/static``; nothing comes from the internet.

Logging in with the admin token sets a signed session cookie
(:mod:`fileproc.web.ui.session`): http-only, ``SameSite=Strict``, and ``Secure``
when the request came over https (directly, or through a proxy on an address
uvicorn trusts for ``X-Forwarded-Proto``). Every POST carries the session's
CSRF token. Pages answer with a Content-Security-Policy that allows only this
origin's own CSS, script and images. A client address that gave a wrong token
:data:`LOGIN_ATTEMPTS` times within :data:`LOGIN_WINDOW` seconds waits (429).

The API's docs (``/ui/docs``, ``/ui/redoc``, and the schema they fetch,
``/ui/openapi.json``) are here too, for the session: the admin API takes its
token in the Authorization header only, which a browser cannot send.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from fileproc import dispatch
from fileproc.errors import BucketNotFound, ObjectNotFound, StorageError
from fileproc.events import ObjectEvent
from fileproc.rules import render_key, verdicts
from fileproc.service import Service
from fileproc.state import STATUSES, Job, JobStatus
from fileproc.tokens import Tokens
from fileproc.web.bounds import Throttle
from fileproc.web.ui.overview import chart, overview
from fileproc.web.ui.session import COOKIE, Session, Sessions

HERE = Path(__file__).parent
PAGE_SIZE = 50
SEARCH_PAGE = 20
PREVIEWED = frozenset({"image/png", "image/jpeg", "image/webp", "image/gif", "image/avif"})
"""Output types shown inline; anything else is offered as a download (an SVG or HTML output could run script)."""
EVENT_NAMES = ("s3:ObjectCreated:Put", "s3:ObjectCreated:Post", "s3:ObjectCreated:Copy",
               "s3:ObjectCreated:CompleteMultipartUpload", "s3:ObjectRemoved:Delete")
LOGIN_ATTEMPTS = 10
LOGIN_WINDOW = 60
"""Wrong tokens a client address may give within this many seconds before it waits (429)."""
CSP = ("default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


class _LoginNeeded(Exception):
    def __init__(self, request: Request) -> None:
        self.request = request


def install(app: FastAPI, service: Service, tokens: Tokens) -> None:
    """Add the dashboard's routes (``/ui``...) and static files (``/ui/static``) to ``app``."""
    sessions = Sessions(tokens.admin)
    logins = Throttle(LOGIN_ATTEMPTS, LOGIN_WINDOW)
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.filters.update(ago=_ago, clock=_clock, duration=_duration, size=_size, kb=_kb)
    templates.env.globals.update(STATUSES=[str(s) for s in STATUSES], pipelines=service.pipelines)
    router = APIRouter(prefix="/ui", include_in_schema=False)

    def session_of(request: Request) -> Session:
        found = sessions.check(request.cookies.get(COOKIE))
        if found is None:
            raise _LoginNeeded(request)
        return found

    async def form_of(request: Request, session: Session | None) -> dict[str, str]:
        """The posted form's fields; refused unless it carries the session's CSRF token."""
        body = (await request.body()).decode("utf-8", "replace")
        fields = {name: values[0] for name, values in parse_qs(body, keep_blank_values=True).items()}
        if session is not None and not hmac.compare_digest(fields.get("csrf", "").encode(), session.csrf.encode()):
            raise _BadForm()
        return fields

    def page(request: Request, name: str, session: Session | None, status: int = 200, **context: Any) -> Response:
        response = templates.TemplateResponse(request, name, {"session": session, "page": name.split(".")[0],
                                                              **context}, status_code=status)
        _harden(response)
        return response

    @app.exception_handler(_LoginNeeded)
    def _to_login(_: Request, exc: _LoginNeeded) -> Response:
        request = exc.request
        if request.method != "GET" or request.url.path.startswith(("/ui/outputs", "/ui/openapi.json")):
            return Response("log in at /ui/login", status_code=401, media_type="text/plain")
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/ui/login?{urlencode({'next': target})}", status_code=303)

    @app.exception_handler(_BadForm)
    def _bad_form(request: Request, _: _BadForm) -> Response:
        return page(request, "message.html", None, 403, title="Form refused",
                    message="This form's CSRF token is missing or belongs to another session. "
                            "Reload the page and try again.")

    @router.get("/login")
    def login_form(request: Request, next: str = "/ui") -> Response:
        return page(request, "login.html", None, next=_local(next), error=None)

    @router.post("/login")
    async def login(request: Request) -> Response:
        client = request.client.host if request.client else ""
        if wait := logins.wait(client):  # refused before its body is read, even with the right token
            refused = page(request, "login.html", None, 429, next="/ui",
                           error=f"Too many wrong tokens from your address: try again in {wait} s.")
            refused.headers["Retry-After"] = str(wait)
            return refused
        fields = await form_of(request, None)
        target = _local(fields.get("next", "/ui"))
        if not sessions.token_is_right(fields.get("token", "")):
            logins.failed(client)
            return page(request, "login.html", None, 401, next=target,
                        error="That is not the admin token.")
        logins.succeeded(client)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(COOKIE, sessions.issue(), max_age=sessions.max_age, path="/ui", httponly=True,
                            samesite="strict", secure=request.url.scheme == "https")
        return response

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        await form_of(request, session_of(request))
        response = RedirectResponse("/ui/login", status_code=303)
        response.delete_cookie(COOKIE, path="/ui", httponly=True, samesite="strict",
                               secure=request.url.scheme == "https")
        return response

    @router.get("")
    def home(request: Request) -> Response:
        session = session_of(request)
        found = overview(service)
        return page(request, "overview.html", session, o=found, bars=chart(found), refresh=5)

    @router.get("/jobs")
    def jobs(request: Request, status: str = "", pipeline: str = "", bucket: str = "", prefix: str = "",
             page_number: Annotated[int, Query(alias="page")] = 1) -> Response:
        session = session_of(request)
        status = status if status in STATUSES else ""
        page_number = max(1, page_number)
        found = service.db.list_jobs(status or None, PAGE_SIZE + 1, bucket=bucket or None, pipeline=pipeline or None,
                                     prefix=prefix or None, offset=(page_number - 1) * PAGE_SIZE)
        filters = {"status": status, "pipeline": pipeline, "bucket": bucket, "prefix": prefix}

        def link(**changes: Any) -> str:
            wanted = {k: v for k, v in {**filters, **changes}.items() if v and v != 1}
            return "/ui/jobs" + (f"?{urlencode(wanted)}" if wanted else "")

        return page(request, "jobs.html", session, jobs=found[:PAGE_SIZE], filters=filters,
                    counts=service.db.count_jobs(), page_number=page_number, more=len(found) > PAGE_SIZE,
                    link=link, refresh=3, retried=request.query_params.get("retried"))

    @router.post("/jobs/retry-failed")
    async def retry_failed(request: Request) -> Response:
        await form_of(request, session_of(request))
        ids = service.db.failed_job_ids()
        for job_id in ids:
            dispatch.retry(service, job_id)
        return RedirectResponse(f"/ui/jobs?{urlencode({'retried': len(ids)})}", status_code=303)

    @router.get("/jobs/{job_id}")
    def job(request: Request, job_id: int) -> Response:
        session = session_of(request)
        found = service.db.get_job(job_id)
        if found is None:
            return page(request, "message.html", session, 404, title=f"No job {job_id}",
                        message="No job has this number.")
        return page(request, "job.html", session, job=found, steps=_steps(service, found), previewed=PREVIEWED,
                    refresh=0 if found.finished else 2, retried=request.query_params.get("retried"))

    @router.post("/jobs/{job_id}/retry")
    async def retry(request: Request, job_id: int) -> Response:
        await form_of(request, session_of(request))
        found = dispatch.retry(service, job_id)
        if found is None:
            return page(request, "message.html", None, 404, title=f"No job {job_id}", message="No job has this number.")
        return RedirectResponse(f"/ui/jobs/{job_id}?retried=1", status_code=303)

    @router.get("/outputs/{job_id}/{index}")
    def output(request: Request, job_id: int, index: int) -> Response:
        """One recorded output of a job, streamed from storage (only outputs: never any object by name)."""
        session_of(request)
        found = service.db.get_job(job_id)
        if found is None or not 0 <= index < len(found.outputs):
            return Response("no such output", status_code=404, media_type="text/plain")
        made = found.outputs[index]
        try:
            stream = service.storage.open(made.bucket, made.key)
        except (ObjectNotFound, BucketNotFound):
            return Response("this output is no longer in storage", status_code=404, media_type="text/plain")
        except StorageError as exc:
            return Response(f"cannot read it from storage: {exc}", status_code=503, media_type="text/plain")
        inline = made.content_type in PREVIEWED
        name = made.key.rsplit("/", 1)[-1].replace('"', "")
        headers = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox; default-src 'none'",
                   "Cache-Control": "private, max-age=60",
                   "Content-Disposition": f'{"inline" if inline else "attachment"}; filename="{name}"'}
        return StreamingResponse(_chunks(stream), headers=headers,
                                 media_type=made.content_type if inline else "application/octet-stream")

    @router.get("/pipelines")
    def pipelines(request: Request, target: str = "", event: str = EVENT_NAMES[0], size: str = "") -> Response:
        session = session_of(request)
        tested, problem = None, None
        if target:
            bucket, _, key = target.strip().lstrip("/").partition("/")
            if not bucket or not key:
                problem = "Give BUCKET/KEY, e.g. uploads/pets/cat.jpg"
            elif size and not size.isdigit():
                problem = "The size is a number of bytes."
            else:
                # What `fileproc match` decides, with the same functions.
                probe = ObjectEvent(bucket=bucket, key=key, event_name=event, size=int(size) if size else None,
                                    source="match")
                tested = [{"pipeline": p, "reason": reason,
                           "output": f"{p.output.bucket.replace('{bucket}', bucket)}/"
                                     + render_key(p.output.key, pipeline=p.name, bucket=bucket, key=key, name="NAME")}
                          for p, reason in verdicts(list(service.pipelines.values()), probe)]
        return page(request, "pipelines.html", session, target=target, event=event, size=size, tested=tested,
                    problem=problem, event_names=EVENT_NAMES, queue_of=_queue_of(service), dumps=json.dumps)

    @router.get("/search")
    def search(request: Request, q: str = "", bucket: str = "", type: str = "",
               page_number: Annotated[int, Query(alias="page", ge=1)] = 1) -> Response:
        from fileproc.api import search_index
        from fileproc.search import IndexCorrupt

        session = session_of(request)
        found, problem = None, None
        if q.strip():
            try:
                found = search_index(app).search(q, bucket=bucket or None, type=type or None, page=page_number,
                                                 per_page=SEARCH_PAGE)
            except IndexCorrupt as exc:
                problem = f"{exc}; the indexer rebuilds it from storage"
        return page(request, "search.html", session, q=q, bucket=bucket, type=type, found=found,
                    problem=problem, page_number=page_number, per_page=SEARCH_PAGE)

    @router.get("/usage")
    def usage(request: Request, by: str = "function", since: str = "7d") -> Response:
        from datetime import UTC, datetime, timedelta

        from fileproc.serverless.metering import GROUPINGS
        from fileproc.serverless.metering import usage as measure

        session = session_of(request)
        by = by if by in GROUPINGS else "function"
        windows = {"1d": timedelta(days=1), "7d": timedelta(days=7), "30d": timedelta(days=30), "all": None}
        since = since if since in windows else "7d"
        window = windows[since]
        groups = measure(service.db, service.settings, by=by,
                         since=datetime.now(UTC) - window if window else None)
        return page(request, "usage.html", session, groups=groups, by=by, since=since, groupings=GROUPINGS,
                    windows=list(windows), settings=service.settings.usage)

    @router.get("/why")
    def why(request: Request, target: str = "") -> Response:
        from fileproc.why import explain

        session = session_of(request)
        bucket, _, key = target.strip().lstrip("/").partition("/")
        found = explain(service, bucket, key) if bucket and key else None
        return page(request, "why.html", session, target=target, found=found,
                    problem="Give BUCKET/KEY, e.g. uploads/pets/cat.jpg" if target and not found else None)

    @router.get("/docs")
    def api_docs(request: Request) -> Response:
        session_of(request)
        return get_swagger_ui_html(openapi_url="/ui/openapi.json", title="fileproc API")

    @router.get("/redoc")
    def api_redoc(request: Request) -> Response:
        session_of(request)
        return get_redoc_html(openapi_url="/ui/openapi.json", title="fileproc API")

    @router.get("/openapi.json")
    def openapi(request: Request) -> Response:
        session_of(request)  # the session's cookie goes with the docs page's fetch (same site, under /ui)
        return JSONResponse(app.openapi())

    app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="ui-static")


class _BadForm(Exception):
    pass


def _harden(response: Response) -> None:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cache-Control"] = "no-store"


def _local(target: str) -> str:
    """A redirect target within the dashboard (never another site: ``//host`` or ``https://``)."""
    return target if target.startswith("/ui") and not target.startswith("//") and "\\" not in target else "/ui"


def _chunks(stream: Any, size: int = 256 * 1024) -> Iterator[bytes]:
    try:
        while chunk := stream.read(size):
            yield chunk
    finally:
        stream.close()


def _steps(service: Service, job: Job) -> list[dict[str, Any]]:
    pipeline = service.pipelines.get(job.pipeline)
    if pipeline is None:
        return []
    done = len(pipeline.steps) if job.status == JobStatus.SUCCEEDED else job.step_index
    return [{"number": n + 1, "function": step.function, "params": step.params,
             "state": "done" if n < done else ("current" if n == job.step_index else "later")}
            for n, step in enumerate(pipeline.steps)]


def _queue_of(service: Service) -> Any:
    def queue(step: Any) -> str:
        try:
            return service.queue_for(step)
        except Exception:  # a function that no longer loads: say so on the page, never fail it
            return "?"
    return queue


def _ago(when: datetime | None, now: datetime | None = None) -> str:
    if when is None:
        return ""
    seconds = ((now or datetime.now(UTC)) - when).total_seconds()
    if seconds < 0:
        return "just now"
    for unit, length in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= length:
            return f"{int(seconds // length)} {unit} ago"
    return f"{int(seconds)} s ago"


def _clock(when: datetime | None) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if when else ""


def _duration(ms: float | None) -> str:
    if ms is None:
        return ""
    if ms < 1000:
        return f"{ms:.0f} ms"
    seconds = ms / 1000
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _size(n: int | None) -> str:
    if n is None:
        return ""
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"


def _kb(kb: int | None) -> str:
    return _size(kb * 1024) if kb else ""


__all__ = ["install"]
