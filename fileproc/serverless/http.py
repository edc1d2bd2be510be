"""The HTTP side of user functions: ``POST /functions/NAME/invoke`` and ``GET /functions/invocations/ID``.

Added to the API by :func:`fileproc.api.create_app`, behind the admin token or the function's own
(``fileproc functions token NAME``), either as ``Authorization: Bearer T``. An invocation's body is at
most :data:`INVOKE_BODY`.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict

from fileproc.rules import Step
from fileproc.service import Service
from fileproc.web.bounds import Limit

INVOKE_BODY = Limit(256 * 1024, "an event as large as Lambda takes for an asynchronous invocation")
"""The largest body ``POST /functions/NAME/invoke`` takes (an S3 event is about 1 KB); read before the
token is checked, so no larger than it needs to be."""


class InvokeRequest(BaseModel):
    """An object to run a function on: ``bucket`` and ``key``, or an S3 ``event`` (its first record's)."""

    model_config = ConfigDict(extra="forbid")
    bucket: str | None = None
    key: str | None = None
    event: dict[str, Any] | None = None


def add_function_routes(app: FastAPI, service: Service, admin_auth: Any) -> None:
    """``POST /functions/NAME/invoke`` and ``GET /functions/invocations/ID``."""
    from urllib.parse import unquote_plus

    from fileproc.api import _bearer, _json
    from fileproc.errors import FunctionNotFound, ObjectNotFound
    from fileproc.serverless import invocations
    from fileproc.state.deployments import token_matches

    def allowed(request: Request, function: str) -> None:
        """The admin token, or the function's own (``fileproc functions token NAME``)."""
        try:
            admin_auth(request)
        except HTTPException:
            if not token_matches(service.db, function.partition(":")[0], _bearer(request)):
                raise

    @app.post("/functions/{name}/invoke")
    def invoke_function(name: str, body: InvokeRequest, request: Request,
                        mode: Annotated[str, Query(pattern="^(sync|async)$")] = "sync") -> Response:
        allowed(request, name)
        if request.headers.get("x-amz-invocation-type", "").lower() == "event":  # Lambda's own way to ask
            mode = "async"
        bucket, key = body.bucket, body.key
        if body.event is not None:
            try:
                record = body.event["Records"][0]["s3"]
                bucket, key = record["bucket"]["name"], unquote_plus(record["object"]["key"])
            except (KeyError, IndexError, TypeError) as exc:
                raise HTTPException(400, "event: not an S3 event (Records[0].s3.bucket.name and .object.key)") from exc
        if not bucket or not key:
            raise HTTPException(400, "give bucket and key, or an S3 event")
        try:
            job = invocations.submit(service, name, bucket, key, mode=mode)
        except (FunctionNotFound, ObjectNotFound) as exc:
            raise HTTPException(404, str(exc)) from exc
        if mode == "async":
            return _json({"invocation": job.id, "status": job.status,
                          "poll": f"/functions/invocations/{job.id}"}, 202)
        spec = service.spec(Step(function=name))
        done = invocations.wait(service, job.id, spec.timeout + 30) or job
        answer = invocations.describe(done)
        if not done.finished:
            return _json(answer, 202)  # still running: poll it
        failed = {"X-Amz-Function-Error": "Unhandled"} if done.status == "failed" else None
        return _json(answer, 200, failed)

    @app.get("/functions/invocations/{invocation}")
    def invocation(invocation: int, request: Request) -> dict[str, Any]:
        job = service.db.get_job(invocation)
        answer = invocations.describe(job) if job is not None and invocations.is_direct(job.pipeline) else None
        allowed(request, answer["function"] if answer else "")
        if answer is None:
            raise HTTPException(404, f"no invocation {invocation}")
        return answer


__all__ = ["INVOKE_BODY", "InvokeRequest", "add_function_routes"]
