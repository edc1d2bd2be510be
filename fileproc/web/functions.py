"""The HTTP side of deployed user functions: ``POST /functions/NAME/invoke`` and ``GET /functions/invocations/ID``.

Behind the admin token or the function's own (``fileproc functions token
NAME``), either as ``Authorization: Bearer T``. An invocation's body is at
most :data:`INVOKE_BODY`. The invocations themselves are
:mod:`fileproc.serverless.invocations`'.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import unquote_plus

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict

from fileproc.errors import FunctionNotFound, ObjectNotFound
from fileproc.rules import Step
from fileproc.serverless import invocations
from fileproc.service import Service
from fileproc.state.deployments import token_matches
from fileproc.web import auth
from fileproc.web.bounds import JSONRoute, Limit
from fileproc.web.context import ServiceDep
from fileproc.web.responses import json_response

INVOKE_BODY = Limit(256 * 1024, "an event as large as Lambda takes for an asynchronous invocation")
"""The largest body ``POST /functions/NAME/invoke`` takes (an S3 event is about 1 KB); read before the
token is checked, so no larger than it needs to be."""

router = APIRouter(route_class=JSONRoute)


class InvokeRequest(BaseModel):
    """An object to run a function on: ``bucket`` and ``key``, or an S3 ``event`` (its first record's)."""

    model_config = ConfigDict(extra="forbid")
    bucket: str | None = None
    key: str | None = None
    event: dict[str, Any] | None = None


def allowed(service: Service, request: Request, function: str) -> None:
    """Refuse (401) unless the request carries the admin token or ``function``'s own."""
    try:
        auth.admin(request)
    except HTTPException:
        if not token_matches(service.db, function.partition(":")[0], auth.bearer(request)):
            raise


def target(body: InvokeRequest) -> tuple[str, str]:
    """The bucket and key an invocation names (400 if it names none)."""
    bucket, key = body.bucket, body.key
    if body.event is not None:
        try:
            record = body.event["Records"][0]["s3"]
            bucket, key = record["bucket"]["name"], unquote_plus(record["object"]["key"])
        except (KeyError, IndexError, TypeError) as exc:
            raise HTTPException(400, "event: not an S3 event (Records[0].s3.bucket.name and .object.key)") from exc
    if not bucket or not key:
        raise HTTPException(400, "give bucket and key, or an S3 event")
    return bucket, key


@router.post("/functions/{name}/invoke")
def invoke_function(service: ServiceDep, name: str, body: InvokeRequest, request: Request,
                    mode: Annotated[str, Query(pattern="^(sync|async)$")] = "sync") -> Response:
    allowed(service, request, name)
    if request.headers.get("x-amz-invocation-type", "").lower() == "event":  # Lambda's own way to ask
        mode = "async"
    bucket, key = target(body)
    try:
        job = invocations.submit(service, name, bucket, key, mode=mode)
    except (FunctionNotFound, ObjectNotFound) as exc:
        raise HTTPException(404, str(exc)) from exc
    if mode == "async":
        return json_response({"invocation": job.id, "status": job.status,
                              "poll": f"/functions/invocations/{job.id}"}, 202)
    spec = service.spec(Step(function=name))
    done = invocations.wait(service, job.id, spec.timeout + 30) or job
    answer = invocations.describe(done)
    if not done.finished:
        return json_response(answer, 202)  # still running: poll it
    failed = {"X-Amz-Function-Error": "Unhandled"} if done.status == "failed" else None
    return json_response(answer, 200, failed)


@router.get("/functions/invocations/{invocation}")
def invocation(service: ServiceDep, invocation: int, request: Request) -> dict[str, Any]:
    job = service.db.get_job(invocation)
    answer = invocations.describe(job) if job is not None and invocations.is_direct(job.pipeline) else None
    allowed(service, request, answer["function"] if answer else "")
    if answer is None:
        raise HTTPException(404, f"no invocation {invocation}")
    return answer


__all__ = ["INVOKE_BODY", "InvokeRequest", "allowed", "invocation", "invoke_function", "router", "target"]
