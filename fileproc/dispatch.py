"""Dispatch: from an ObjectEvent to queued jobs, exactly once per version.

The idempotency key of a job is (pipeline, bucket, key, version id or etag):
a duplicate notification finds the existing job and does nothing. A job is
written to the state database before its message goes to the broker; if the
broker is away the job waits as "not yet sent" and :func:`flush_pending`
sends it later, so no recorded event is lost.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from fileproc.errors import BrokerUnavailable
from fileproc.events import ObjectEvent
from fileproc.rules import match
from fileproc.runtime.app import send_step
from fileproc.service import Service
from fileproc.state import Job

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dispatched:
    job: Job
    created: bool


def submit(service: Service, event: ObjectEvent, *, send: bool = True) -> list[Dispatched]:
    """Record ``event`` and create (and queue) a job for every pipeline it matches."""
    service.db.record_event(event)
    pipelines = match(list(service.pipelines.values()), event)
    if pipelines:
        made_by = service.db.output_of(event.bucket, event.key, event.etag)
        pipelines = [p for p in pipelines if p.name not in made_by]
    results = []
    for pipeline in pipelines:
        job, created = service.db.create_job(pipeline.name, event)
        results.append(Dispatched(job, created))
        if created:
            log.info("job %s: %s on %s/%s", job.id, pipeline.name, event.bucket, event.key)
    if send:
        for item in results:
            if item.created:
                enqueue(service, item.job)
    return results


def enqueue(service: Service, job: Job) -> bool:
    """Send the job's current step to its queue; False (and kept pending) if the broker is away."""
    pipeline = service.pipelines.get(job.pipeline)
    if pipeline is None:
        service.db.finish(job.id, "failed", f"pipeline {job.pipeline!r} is no longer configured")
        return False
    step = pipeline.steps[job.step_index]
    try:
        send_step(job.id, job.step_index, service.queue_for(step))
    except BrokerUnavailable as exc:
        log.warning("job %s stays pending: %s", job.id, exc)
        return False
    service.db.mark_enqueued(job.id)
    return True


def flush_pending(service: Service) -> int:
    """Send every job whose message never reached the broker. Returns how many were sent."""
    sent = 0
    for job in service.db.pending_enqueue():
        if not enqueue(service, job):
            break
        sent += 1
    return sent


def retry(service: Service, job_id: int) -> Job | None:
    """Run a failed job again from the step that failed."""
    job = service.db.reset_for_retry(job_id)
    if job is not None and job.status == "queued":
        enqueue(service, job)
    return job
