"""Logging in and out of the dashboard, and where a request without a session or a form without its CSRF token goes.

Logging in with the admin token sets the session cookie (http-only,
``SameSite=Strict``, ``Secure`` over https). A client address that gave a
wrong token :data:`LOGIN_ATTEMPTS` times within :data:`LOGIN_WINDOW` seconds
waits (429), before its body is even read. The app's throttle is
``request.app.state.ui_logins``.
"""

from __future__ import annotations

from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from fileproc.web.bounds import Throttle
from fileproc.web.ui.render import page
from fileproc.web.ui.session import COOKIE, BadForm, LoginNeeded, form_of, session_of, sessions_of

LOGIN_ATTEMPTS = 10
LOGIN_WINDOW = 60
"""Wrong tokens a client address may give within this many seconds before it waits (429)."""

router = APIRouter(prefix="/ui", include_in_schema=False)


def local(target: str) -> str:
    """A redirect target within the dashboard (never another site: ``//host`` or ``https://``)."""
    return target if target.startswith("/ui") and not target.startswith("//") and "\\" not in target else "/ui"


@router.get("/login")
def login_form(request: Request, next: str = "/ui") -> Response:
    return page(request, "login.html", None, next=local(next), error=None)


@router.post("/login")
async def login(request: Request) -> Response:
    logins: Throttle = request.app.state.ui_logins
    sessions = sessions_of(request)
    client = request.client.host if request.client else ""
    if wait := logins.wait(client):  # refused before its body is read, even with the right token
        refused = page(request, "login.html", None, 429, next="/ui",
                       error=f"Too many wrong tokens from your address: try again in {wait} s.")
        refused.headers["Retry-After"] = str(wait)
        return refused
    fields = await form_of(request, None)
    target = local(fields.get("next", "/ui"))
    if not sessions.token_is_right(fields.get("token", "")):
        logins.failed(client)
        return page(request, "login.html", None, 401, next=target, error="That is not the admin token.")
    logins.succeeded(client)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(COOKIE, sessions.issue(), max_age=sessions.max_age, path="/ui", httponly=True,
                        samesite="strict", secure=request.url.scheme == "https")
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    await form_of(request, session_of(request))
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(COOKIE, path="/ui", httponly=True, samesite="strict", secure=request.url.scheme == "https")
    return response


def to_login(_: Request, exc: Exception) -> Response:
    """LoginNeeded's answer: a page goes to the login form (and back after it); the rest is 401."""
    assert isinstance(exc, LoginNeeded)
    request = exc.request
    if request.method != "GET" or request.url.path.startswith(("/ui/outputs", "/ui/openapi.json")):
        return Response("log in at /ui/login", status_code=401, media_type="text/plain")
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/ui/login?{urlencode({'next': target})}", status_code=303)


def form_refused(request: Request, _: Exception) -> Response:
    """BadForm's answer (403)."""
    return page(request, "message.html", None, 403, title="Form refused",
                message="This form's CSRF token is missing or belongs to another session. "
                        "Reload the page and try again.")


__all__ = ["LOGIN_ATTEMPTS", "LOGIN_WINDOW", "BadForm", "LoginNeeded", "form_refused", "local", "router", "to_login"]
