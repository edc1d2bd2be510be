"""The dashboard's jobs: the list, one job with its steps, retries, and a job's outputs."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import RedirectResponse, Response, StreamingResponse

from fileproc import dispatch
from fileproc.errors import BucketNotFound, ObjectNotFound, StorageError
from fileproc.service import Service
from fileproc.state import STATUSES, Job, JobStatus
from fileproc.web.context import ServiceDep
from fileproc.web.ui.render import page
from fileproc.web.ui.session import form_of, session_of

PAGE_SIZE = 50
PREVIEWED = frozenset({"image/png", "image/jpeg", "image/webp", "image/gif", "image/avif"})
"""Output types shown inline; anything else is offered as a download (an SVG or HTML output could run script)."""

router = APIRouter(prefix="/ui", include_in_schema=False)


@router.get("/jobs")
def jobs(request: Request, service: ServiceDep, status: str = "", pipeline: str = "", bucket: str = "",
         prefix: str = "", page_number: Annotated[int, Query(alias="page")] = 1) -> Response:
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
                link=link, refresh=3, retried=request.query_params.get("retried"),
                progress=lambda job: progress(service, job))


@router.post("/jobs/retry-failed")
async def retry_failed(request: Request, service: ServiceDep) -> Response:
    await form_of(request, session_of(request))
    retried = dispatch.retry_failed(service)
    return RedirectResponse(f"/ui/jobs?{urlencode({'retried': len(retried)})}", status_code=303)


@router.get("/jobs/{job_id}")
def job(request: Request, service: ServiceDep, job_id: int) -> Response:
    session = session_of(request)
    found = service.db.get_job(job_id)
    if found is None:
        return page(request, "message.html", session, 404, title=f"No job {job_id}",
                    message="No job has this number.")
    return page(request, "job.html", session, job=found, steps=steps(service, found), previewed=PREVIEWED,
                refresh=0 if found.finished else 2, retried=request.query_params.get("retried"))


@router.post("/jobs/{job_id}/retry")
async def retry(request: Request, service: ServiceDep, job_id: int) -> Response:
    await form_of(request, session_of(request))
    found = dispatch.retry(service, job_id)
    if found is None:
        return page(request, "message.html", None, 404, title=f"No job {job_id}", message="No job has this number.")
    return RedirectResponse(f"/ui/jobs/{job_id}?retried=1", status_code=303)


@router.get("/outputs/{job_id}/{index}")
def output(request: Request, service: ServiceDep, job_id: int, index: int) -> Response:
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
    return StreamingResponse(chunks(stream), headers=headers,
                             media_type=made.content_type if inline else "application/octet-stream")


def steps(service: Service, job: Job) -> list[dict[str, Any]]:
    """``job``'s pipeline's steps, each done, current or later."""
    pipeline = service.pipeline(job.pipeline)
    if pipeline is None:
        return []
    done = len(pipeline.steps) if job.status == JobStatus.SUCCEEDED else job.step_index
    return [{"number": n + 1, "function": step.function, "params": step.params,
             "state": "done" if n < done else ("current" if n == job.step_index else "later")}
            for n, step in enumerate(pipeline.steps)]


NOT_TRIES = ("throttled", "skipped")
"""Attempts that never ran the handler: not tries."""


@dataclass(frozen=True)
class Progress:
    """How far a job is, as the jobs list shows it: steps done of all, and the tries of each step."""

    done: int
    total: int
    tries: str
    title: str
    tries_title: str


def progress(service: Service, job: Job) -> Progress | None:
    """Steps done (all of them once it succeeded; before the current one otherwise) and tries per step."""
    pipeline = service.pipeline(job.pipeline)
    if pipeline is None:
        return None
    total = len(pipeline.steps)
    done = total if job.status == JobStatus.SUCCEEDED else min(job.step_index, total)
    per_step: dict[int, int] = {}
    for attempt in job.attempts:
        if attempt.status not in NOT_TRIES:
            per_step[attempt.step_index] = per_step.get(attempt.step_index, 0) + 1
    if job.status == JobStatus.SUCCEEDED:
        title = f"all {total} step(s) done"
    else:
        title = f"{done} of {total} step(s) done; step {min(job.step_index, total - 1) + 1} {job.status}"
    tries = " · ".join(str(per_step.get(n, 0)) for n in range(total)) if total > 1 else str(per_step.get(0, 0))
    tries_title = "; ".join(f"step {n + 1}: {per_step.get(n, 0)} tries" for n in range(total))
    return Progress(done, total, tries, title, tries_title)


def chunks(stream: Any, size: int = 256 * 1024) -> Iterator[bytes]:
    try:
        while chunk := stream.read(size):
            yield chunk
    finally:
        stream.close()


__all__ = ["PAGE_SIZE", "PREVIEWED", "Progress", "job", "jobs", "output", "progress", "retry", "retry_failed", "router",
           "steps"]
