"""Why was this object (not) processed? Everything fileproc knows about one object, in one place.

:func:`explain` gathers, for ``bucket/key``:

- the object as storage has it now (HEAD), or that it is gone;
- every notification recorded for it: each job keeps the event that made it
  (its source: webhook, watcher, put, backfill, reconcile), and the
  reconciler's recorded passes that found it without a job (its notification
  was lost). Notifications no pipeline takes are counted, never stored, so
  they cannot be listed;
- each pipeline, whether it takes the object and, when not, the rule that
  said no (:func:`fileproc.rules.verdicts`, what dispatch decides with);
- its jobs, with their attempts, errors and outputs, and whether each output
  is in storage now.

``fileproc why`` and ``GET /why`` print it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fileproc.errors import BucketNotFound, ObjectNotFound, StorageError
from fileproc.events import ObjectEvent
from fileproc.objects import event_for
from fileproc.rules import verdicts
from fileproc.service import Service
from fileproc.state import Job
from fileproc.state.drift import found_without_job

MAX_JOBS = 100
MAX_DRIFT_PASSES = 1000
"""Recorded reconcile passes of the bucket searched for the key (newest first; kept at most 30 days)."""


@dataclass
class Explanation:
    bucket: str
    key: str
    object: dict[str, Any] | None
    """The object now (size, etag, version_id, content_type, last_modified), or None when it is gone."""
    storage_error: str | None
    notifications: list[dict[str, Any]] = field(default_factory=list)
    """What fileproc recorded arriving for it, oldest first: jobs' events and reconcile finds."""
    pipelines: list[dict[str, Any]] = field(default_factory=list)
    jobs: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"bucket": self.bucket, "key": self.key, "object": self.object, "storage_error": self.storage_error,
                "notifications": self.notifications, "pipelines": self.pipelines, "jobs": self.jobs}


def explain(service: Service, bucket: str, key: str) -> Explanation:
    """Everything fileproc knows about ``bucket/key`` (see the module's docstring)."""
    current, error = _head(service, bucket, key)
    jobs = list(reversed(service.db.list_jobs(limit=MAX_JOBS, bucket=bucket, key=key)))  # oldest first
    found = Explanation(bucket, key, None, error)
    if current is not None:
        found.object = {"size": current.size, "etag": current.etag, "version_id": current.version_id,
                        "content_type": current.content_type, "last_modified": current.time.isoformat()}
    found.notifications = _notifications(service, bucket, key, jobs)
    # Judged on the object as it is now; on the last notification's event when it is gone.
    event = current or (jobs[-1].object_event if jobs else ObjectEvent(bucket, key, source="why"))
    for pipeline, reason in verdicts(list(service.pipelines.values()), event):
        found.pipelines.append({"name": pipeline.name, "matched": reason is None, "reason": reason,
                                "steps": [step.function for step in pipeline.steps]})
    found.jobs = [_job(service, job) for job in jobs]
    return found


def _head(service: Service, bucket: str, key: str) -> tuple[ObjectEvent | None, str | None]:
    try:
        info = service.storage.head(bucket, key)
    except (ObjectNotFound, BucketNotFound):
        return None, None
    except StorageError as exc:
        return None, f"cannot look at the object in storage: {exc}"
    return event_for(bucket, key, info, source="why"), None


def _notifications(service: Service, bucket: str, key: str, jobs: list[Job]) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    for job in jobs:
        event = job.event
        seen.append({"time": job.created_at.isoformat(), "source": event.get("source"),
                     "event": event.get("event_name"), "etag": event.get("etag"),
                     "version_id": event.get("version_id"), "job": job.id, "pipeline": job.pipeline})
    for finished in found_without_job(service.db, bucket, key, passes=MAX_DRIFT_PASSES):
        seen.append({"time": finished.isoformat() if finished else None, "source": "reconcile",
                     "event": "found by listing without a job (its notification was lost)",
                     "etag": None, "version_id": None, "job": None, "pipeline": None})
    return sorted(seen, key=lambda item: item["time"] or "")


def _job(service: Service, job: Job) -> dict[str, Any]:
    data = job.to_dict()
    data["source"] = job.event.get("source")
    for output in data["outputs"]:
        try:
            now = service.storage.head(output["bucket"], output["key"])
        except (ObjectNotFound, BucketNotFound):
            output["exists"] = False
        except StorageError as exc:
            output["exists"], output["storage_error"] = None, str(exc)
        else:
            output["exists"] = True
            output["same"] = now.etag == output["etag"]  # False: something wrote over it since
    return data


def render(found: Explanation) -> list[str]:
    """``fileproc why``'s lines."""
    lines = [f"{found.bucket}/{found.key}"]
    obj = found.object
    if obj is not None:
        lines.append(f"  in storage: {obj['size']} bytes, etag {obj['etag']}"
                     + (f", version {obj['version_id']}" if obj["version_id"] else "")
                     + f", {obj['content_type']}, modified {obj['last_modified']}")
    else:
        lines.append(f"  in storage: {found.storage_error or 'not there (deleted, or never uploaded)'}")
    lines.append("notifications recorded:")
    for item in found.notifications:
        made = f" -> job {item['job']} ({item['pipeline']})" if item["job"] else ""
        lines.append(f"  {item['time']}  {item['source']}: {item['event']}"
                     + (f" etag {item['etag']}" if item["etag"] else "") + made)
    if not found.notifications:
        lines.append("  none (notifications no pipeline takes are counted, not recorded)")
    lines.append("pipelines:")
    for pipeline in found.pipelines:
        verdict = "matches" if pipeline["matched"] else f"does not match: {pipeline['reason']}"
        lines.append(f"  {pipeline['name']}: {verdict}")
    if not found.pipelines:
        lines.append("  none configured")
    lines.append("jobs:")
    for job in found.jobs:
        lines.append(f"  job {job['id']} {job['pipeline']} {job['status']} (version {job['version']}, "
                     f"from {job['source']})" + (f": {job['error']}" if job["error"] else ""))
        for attempt in job["attempts"]:
            lines.append(f"    attempt {attempt['id']} step {attempt['step']} {attempt['function']}: "
                         f"{attempt['status']}, {attempt['duration_ms'] or 0} ms on {attempt['worker'] or '?'}"
                         + (f": {attempt['error']}" if attempt["error"] else ""))
        for output in job["outputs"]:
            state = {True: "in storage", False: "MISSING from storage", None: "unknown"}[output["exists"]]
            if output["exists"] and not output.get("same", True):
                state = "in storage, overwritten since"
            lines.append(f"    output {output['bucket']}/{output['key']} ({output['size']} bytes): {state}")
    if not found.jobs:
        lines.append("  none")
    return lines


__all__ = ["Explanation", "explain", "render"]
