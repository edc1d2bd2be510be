"""The dashboard's session cookie and CSRF tokens, signed with a key derived from the admin token.

A session is ``EXPIRES.NONCE.SIGNATURE``: nothing is stored on the server, so
every API process (``--workers N``, several hosts sharing the admin token)
accepts the sessions any of them issued. Changing the admin token ends every
session. The CSRF token of a session is a second signature over its nonce: a
form posted without it (or with another session's) is refused.

A route takes its session with :func:`session_of` (:class:`LoginNeeded`
without one: the dashboard sends the browser to log in) and a posted form
with :func:`form_of` (:class:`BadForm` without the session's CSRF token).
The app's :class:`Sessions` are ``request.app.state.ui_sessions``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from urllib.parse import parse_qs

from fastapi import Request

COOKIE = "fileproc_session"
MAX_AGE = 12 * 3600
"""Seconds a session lasts after logging in."""


@dataclass(frozen=True)
class Session:
    nonce: str
    expires: int
    csrf: str


class Sessions:
    """Issues and checks session cookies for one admin token.

    Example::

        sessions = Sessions(tokens.admin)
        cookie = sessions.issue()
        sessions.check(cookie).csrf     # the token the session's forms carry
    """

    def __init__(self, admin_token: str, max_age: int = MAX_AGE) -> None:
        # Derived, never the token itself: a leaked signature tells nothing about the admin token.
        self._key = hmac.new(admin_token.encode(), b"fileproc dashboard session v1", hashlib.sha256).digest()
        self._admin = admin_token.encode()
        self.max_age = max_age

    def token_is_right(self, given: str) -> bool:
        return bool(given) and hmac.compare_digest(given.encode(), self._admin)

    def issue(self) -> str:
        payload = f"{int(time.time()) + self.max_age}.{secrets.token_urlsafe(18)}"
        return f"{payload}.{self._sign(payload)}"

    def check(self, cookie: str | None) -> Session | None:
        """The session this cookie carries; None when it is missing, forged or expired."""
        if not cookie:
            return None
        payload, _, signature = cookie.rpartition(".")
        expires, _, nonce = payload.partition(".")
        if not (nonce and expires.isdigit() and hmac.compare_digest(signature, self._sign(payload))):
            return None
        if int(expires) < time.time():
            return None
        return Session(nonce, int(expires), self._sign(f"csrf.{nonce}"))

    def _sign(self, payload: str) -> str:
        return hmac.new(self._key, payload.encode(), hashlib.sha256).hexdigest()


class LoginNeeded(Exception):
    """The request has no session: a page sends the browser to log in, anything else answers 401."""

    def __init__(self, request: Request) -> None:
        self.request = request


class BadForm(Exception):
    """A posted form without its session's CSRF token (403)."""


def sessions_of(request: Request) -> Sessions:
    sessions: Sessions = request.app.state.ui_sessions
    return sessions


def session_of(request: Request) -> Session:
    """The request's session (its cookie); LoginNeeded without a valid one."""
    found = sessions_of(request).check(request.cookies.get(COOKIE))
    if found is None:
        raise LoginNeeded(request)
    return found


async def form_of(request: Request, session: Session | None) -> dict[str, str]:
    """The posted form's fields; BadForm unless it carries ``session``'s CSRF token (None: not asked)."""
    body = (await request.body()).decode("utf-8", "replace")
    fields = {name: values[0] for name, values in parse_qs(body, keep_blank_values=True).items()}
    if session is not None and not hmac.compare_digest(fields.get("csrf", "").encode(), session.csrf.encode()):
        raise BadForm()
    return fields


__all__ = ["COOKIE", "MAX_AGE", "BadForm", "LoginNeeded", "Session", "Sessions", "form_of", "session_of",
           "sessions_of"]
