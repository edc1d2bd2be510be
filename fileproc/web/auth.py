"""Who may call a route: the webhook token, the admin token, a function's own, or the metrics token.

Tokens travel as ``Authorization: Bearer T``. Only the webhook's may come in
the URL instead (``?token=T``), for stores that cannot set headers
(versitygw): a URL ends up in proxies' logs. The app's tokens are
``request.app.state.tokens`` (:class:`fileproc.tokens.Tokens`).
"""

from __future__ import annotations

import hmac

from fastapi import HTTPException, Request

from fileproc.tokens import Tokens


def bearer(request: Request) -> str:
    """The token of the ``Authorization: Bearer T`` header; empty without one."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


def same(given: str, expected: str) -> bool:
    """Whether ``given`` is ``expected`` (in constant time; an empty one never is)."""
    return bool(given) and hmac.compare_digest(given.encode(), expected.encode())


def require(expected: str, request: Request, *, in_url: bool = False) -> None:
    """Refuse (401) unless the Authorization header carries ``expected``; with ``in_url``, ``?token=`` may."""
    given = bearer(request) or (request.query_params.get("token", "") if in_url else "")
    if not same(given, expected):
        raise HTTPException(401, "missing or wrong token", headers={"WWW-Authenticate": "Bearer"})


def tokens_of(request: Request) -> Tokens:
    tokens: Tokens = request.app.state.tokens
    return tokens


def admin(request: Request) -> None:
    """The admin routes' dependency: 401 without the admin token in the header.

    Example::

        @router.get("/jobs", dependencies=[Depends(admin)])
    """
    require(tokens_of(request).admin, request)


def webhook(request: Request) -> None:
    """``POST /events``: the webhook token, in the header or (versitygw cannot set headers) the URL."""
    require(tokens_of(request).webhook, request, in_url=True)


__all__ = ["admin", "bearer", "require", "same", "tokens_of", "webhook"]
