"""Dispatch: from ObjectEvents to queued jobs, exactly once per version.

The idempotency key of a job is (pipeline, bucket, key, version id or etag):
a duplicate notification finds the existing job and does nothing. Jobs are
written to the state database (many events in one transaction) before their
messages go to the broker; a message that cannot go stays due in the outbox
(:mod:`fileproc.runtime.outbox`) and is sent later, so no recorded event is lost.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from fileproc.events import ObjectEvent
from fileproc.objects import complete
from fileproc.rules import Pipeline, match
from fileproc.runtime import outbox
from fileproc.service import Service
from fileproc.state import Job, JobStatus, Send

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dispatched:
    job: Job
    created: bool


def submit(service: Service, event: ObjectEvent, *, send: bool = True) -> list[Dispatched]:
    """Create (and queue) a job for every pipeline ``event`` matches."""
    return submit_many(service, [event], send=send)


def submit_many(service: Service, events: Iterable[ObjectEvent], *, send: bool = True,
                completed: bool = False) -> list[Dispatched]:
    """Create the jobs of many events in one transaction; send the new ones unless ``send`` is False.

    The one path every intake source submits through. Events that left out
    what rules and deduplication need are completed from a HEAD first
    (:func:`fileproc.objects.complete`); an event no pipeline matches
    costs no database write. ``completed``: the caller did that already.

    With ``send=False`` the caller sends them (:func:`send_new`) after it has
    answered, or leaves them to the outbox.
    """
    pipelines = list(service.pipelines.values())
    # A missing eTag or a size of 0 would mislead deduplication and size rules: HEAD the object first.
    if not completed:
        events = complete(service.storage, pipelines, events)
    wanted = [(pipeline, event) for event in events for pipeline in match(pipelines, event)]
    if not wanted:
        return []
    # An object a pipeline wrote never goes through that pipeline again. Only an event in
    # a bucket the pipeline writes to can be one of its outputs: the rest cost no query.
    suspect = [(p, e) for p, e in wanted if _may_write(p, e.bucket)]
    if suspect:
        written = service.db.outputs_among((e.bucket, e.key, e.etag or "") for _, e in suspect)
        wanted = [(p, e) for p, e in wanted if p.name not in written.get((e.bucket, e.key, e.etag or ""), ())]
    results = [Dispatched(job, created)
               for job, created in service.db.create_jobs([(p.name, e) for p, e in wanted], sending=True)]
    for item in results:
        if item.created:
            log.info("job %s: %s on %s/%s", item.job.id, item.job.pipeline, item.job.bucket, item.job.key)
    if send:
        send_new(service, results)
    return results


def _may_write(pipeline: Pipeline, bucket: str) -> bool:
    """Whether ``pipeline`` can write outputs into ``bucket`` (a templated bucket: maybe)."""
    return "{" in pipeline.output.bucket or pipeline.output.bucket == bucket


def send_new(service: Service, results: Iterable[Dispatched]) -> None:
    """Send the first step of every job just created (already marked sent)."""
    outbox.send(service, [Send(item.job.id, 0, item.job.pipeline) for item in results if item.created])


def retry(service: Service, job_id: int) -> Job | None:
    """Run a failed job again from the step that failed."""
    job = service.db.reset_for_retry(job_id)
    if job is not None and job.status == JobStatus.QUEUED:
        outbox.relay(service)
    return job


def retry_failed(service: Service, job_ids: Iterable[int] | None = None) -> list[Job]:
    """Run failed jobs again, each from the step that failed: ``job_ids``, or every failed job.

    Each is reset first, then their steps go to the broker in one relay pass
    (not one per job). Returns the jobs found (a job id with no job is left out).

    Example::

        retried = dispatch.retry_failed(service)    # fileproc retry --failed
    """
    ids = service.db.failed_job_ids() if job_ids is None else job_ids
    jobs = [job for job in map(service.db.reset_for_retry, ids) if job is not None]
    if any(job.status == JobStatus.QUEUED for job in jobs):
        outbox.relay(service)
    return jobs
