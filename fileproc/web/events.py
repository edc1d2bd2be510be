"""The webhook's routes: ``POST /events`` (bucket notifications in) and ``GET /stats`` (what it saw).

``POST /events`` needs the webhook token, as ``Authorization: Bearer T``
(MinIO's ``auth_token``) or, for stores that cannot set headers (versitygw),
as ``?token=T`` in the webhook URL. Keys are taken as URL-encoded (AWS,
MinIO, RGW) unless the URL says ``?keys=raw`` (versitygw). The request's
logic is :func:`fileproc.intake.webhook.receive`; this module adapts HTTP to
it. The app answers this route before its middleware and routing
(:class:`fileproc.web.app.WebApp`), through :func:`post_events`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import Response

from fileproc.intake.webhook import Committer, receive
from fileproc.web import auth
from fileproc.web.bounds import JSONRoute
from fileproc.web.responses import json_response

router = APIRouter(route_class=JSONRoute)


async def post_events(request: Request) -> Response:
    """``POST /events``: 200 with the jobs once every matched event is committed."""
    auth.webhook(request)
    keys = request.query_params.get("keys", "url")
    if keys not in ("url", "raw"):
        raise HTTPException(400, "keys must be 'url' (URL-encoded keys, as AWS and MinIO send) or 'raw'")
    body = await request.body()  # at most api.max_body_bytes: the app's BodyLimit counts it
    state = request.app.state
    receipt = await receive(state.service, body, state.committer, raw_keys=keys == "raw")
    if receipt.test:
        return json_response({"test": True})
    return json_response({"recorded": receipt.recorded, "jobs": receipt.jobs, "rejected": receipt.rejected})


# Registered so that the route exists for the router (GET /events: 405); the app answers it first.
router.add_route("/events", post_events, methods=["POST"], include_in_schema=False)


@router.get("/stats", dependencies=[Depends(auth.admin)])
def stats(request: Request) -> dict[str, Any]:
    """What the receiver saw since this process started."""
    app = request.app
    committer: Committer = app.state.committer
    return {**app.state.counters.to_dict(), "backlog": committer.backlog, **app.answer_ms()}


__all__ = ["post_events", "router", "stats"]
