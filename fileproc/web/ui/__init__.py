"""The web dashboard at ``/ui``: overview, jobs, a job, pipelines and "why", behind the admin token.

Server-rendered (Jinja2) over the functions the CLI uses: :mod:`fileproc.dispatch`
for retries, :class:`~fileproc.state.Database` for jobs, :mod:`fileproc.rules`
for matching, :mod:`fileproc.why` and :mod:`fileproc.metrics` for the rest.
Its CSS and script are served from ``/ui/static``; nothing comes from the internet.
One router per part: :mod:`~fileproc.web.ui.login`, :mod:`~fileproc.web.ui.pages`
(overview with health first, pipelines, search, usage, why), :mod:`~fileproc.web.ui.jobs`,
:mod:`~fileproc.web.ui.functions` (a function's monitoring, versions, test events, logs, dead letters),
:mod:`~fileproc.web.ui.streams` and
:mod:`~fileproc.web.ui.docs`; each page takes the service and the session
from the request, so it can be called on its own.

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

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from fileproc.service import Service
from fileproc.tokens import Tokens
from fileproc.web.bounds import Throttle
from fileproc.web.ui import docs, functions, jobs, login, pages, streams
from fileproc.web.ui.login import LOGIN_ATTEMPTS, LOGIN_WINDOW
from fileproc.web.ui.render import CSP, templates_for
from fileproc.web.ui.session import BadForm, LoginNeeded, Sessions

STATIC = Path(__file__).parent / "static"


def install(app: FastAPI, service: Service, tokens: Tokens) -> None:
    """Add the dashboard's routes (``/ui``...) and static files (``/ui/static``) to ``app``."""
    app.state.ui_sessions = Sessions(tokens.admin)
    app.state.ui_logins = Throttle(LOGIN_ATTEMPTS, LOGIN_WINDOW)
    app.state.ui_templates = templates_for(service)
    app.add_exception_handler(LoginNeeded, login.to_login)
    app.add_exception_handler(BadForm, login.form_refused)
    for part in (login, pages, jobs, functions, streams, docs):
        app.include_router(part.router)
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="ui-static")


__all__ = ["CSP", "LOGIN_ATTEMPTS", "LOGIN_WINDOW", "install"]
