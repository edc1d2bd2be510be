"""How a dashboard page is rendered: its Jinja2 templates, their filters, and the headers every page carries.

Pages answer with a Content-Security-Policy that allows only this origin's
own CSS, script and images, may not be framed, and are never cached. The
app's templates are ``request.app.state.ui_templates`` (:func:`templates_for`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from fastapi.templating import Jinja2Templates
from markupsafe import Markup, escape

from fileproc.service import Service
from fileproc.state import STATUSES
from fileproc.web.ui.session import Session

TEMPLATES = Path(__file__).parent / "templates"
CSP = ("default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


def templates_for(service: Service) -> Jinja2Templates:
    """The dashboard's templates, with its filters and ``service``'s pipelines."""
    templates = Jinja2Templates(directory=TEMPLATES)
    templates.env.filters.update(ago=ago, clock=clock, duration=duration, size=size, kb=kb, when=when,
                                 job_name=job_name, percent=percent)
    # pipelines: the configured ones; pipeline_of: the one a job follows (a direct invocation's too).
    templates.env.globals.update(STATUSES=[str(s) for s in STATUSES], pipelines=service.pipelines,
                                 pipeline_of=service.pipeline)
    return templates


def page(request: Request, name: str, session: Session | None, status: int = 200, **context: Any) -> Response:
    """The template ``name`` rendered for ``session`` (None: logged out), with the dashboard's headers.

    Example::

        return page(request, "message.html", session, 404, title="No job 7", message="No job has this number.")
    """
    templates: Jinja2Templates = request.app.state.ui_templates
    response = templates.TemplateResponse(request, name, {"session": session, "page": name.split(".")[0],
                                                          **context}, status_code=status)
    harden(response)
    return response


def harden(response: Response) -> None:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cache-Control"] = "no-store"


# -- filters -----------------------------------------------------------------------------


def ago(when: datetime | None, now: datetime | None = None) -> str:
    if when is None:
        return ""
    seconds = ((now or datetime.now(UTC)) - when).total_seconds()
    if seconds < 0:
        return "just now"
    for unit, length in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= length:
            return f"{int(seconds // length)} {unit} ago"
    return f"{int(seconds)} s ago"


def clock(when: datetime | None) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if when else ""


def when(moment: datetime | str | None, now: datetime | None = None) -> Markup:
    """The one way a moment is shown: how long ago, with the exact UTC time on hover (and for machines).

    ``<time datetime="2026-12-05T14:05:03+00:00" title="2026-12-05 14:05:03 UTC">3 min ago</time>``
    """
    if isinstance(moment, str):
        try:
            moment = datetime.fromisoformat(moment)
        except ValueError:
            return Markup(escape(moment))
    if moment is None:
        return Markup("")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    exact = moment.astimezone(UTC)
    return Markup(f'<time datetime="{exact.isoformat(timespec="seconds")}" title="{clock(exact)}">'
                  f"{escape(ago(exact, now))}</time>")


def job_name(pipeline: str) -> str:
    """A job's pipeline as people read it: a direct invocation ``_invoke.async.resize.3f2a...`` is
    ``invoke (async) resize``, an invocation on an event ``_event.resize`` is ``event → resize``."""
    if pipeline.startswith("_invoke."):
        mode, _, rest = pipeline.removeprefix("_invoke.").partition(".")
        return f"invoke ({mode}) {rest.rpartition('.')[0] or rest}"
    if pipeline.startswith("_event."):
        return f"event → {pipeline.removeprefix('_event.')}"
    return pipeline


def percent(fraction: float | None) -> str:
    if fraction is None:
        return "–"
    return f"{fraction * 100:.1f} %" if fraction else "0 %"


def duration(ms: float | None) -> str:
    if ms is None:
        return ""
    if ms < 1000:
        return f"{ms:.0f} ms"
    seconds = ms / 1000
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def size(n: int | None) -> str:
    if n is None:
        return ""
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"


def kb(n: int | None) -> str:
    return size(n * 1024) if n else ""


__all__ = ["CSP", "ago", "clock", "duration", "harden", "job_name", "kb", "page", "percent", "size", "templates_for",
           "when"]
