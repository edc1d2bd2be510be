"""One step's inputs and outputs, and a registered function's step run inside its runner.

:func:`plan_step` says where a step reads and writes (its pipeline's output
location, the provenance its outputs carry, its params, Lambda's region and
qualifier): every kind of function starts from it. :func:`invoke` runs in a
registered function's runner (a child of the worker), so what it returns is
plain picklable data: outputs, usage, the handler's return value, or the
error, classified here because an exception object may not survive
pickling. (A deployed function's runner is a fresh interpreter that builds
its context itself: :mod:`fileproc.serverless.bootstrap`.)

Before a step of an uploaded object runs, the object is checked: still
there, still the version the notification named, not the pipeline's own
output. A registered function's runner does it with the read it needs anyway
(:func:`open_source`: one GET with ``If-Match``, whose answer the handler
then reads), so a step costs one request to the store, not a HEAD and a GET.
A runner that reads through its own client (a deployed function's boto3) is
sent a HEAD's answer instead (:func:`head_source`, from :func:`plan_step`).
Either way a step that must not run ends as a :class:`SourceSkip`.
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

from fileproc.errors import ConfigError, ObjectNotFound, StorageError, kind_of
from fileproc.events import ObjectEvent
from fileproc.functions import Context, FunctionSpec, InputObject, OutputWriter, step_outcome
from fileproc.functions.aws import aws_region
from fileproc.functions.batches import RecordBatch, lambda_event
from fileproc.functions.steps import StepRequest
from fileproc.rules import PROVENANCE_PIPELINE, Pipeline, Step, render_key
from fileproc.service import Service
from fileproc.storage import ObjectInfo, Storage, open_storage


@dataclass(frozen=True)
class StepPlan:
    """Where one step reads and writes, and what its handler is told, for every kind of function."""

    pipeline: Pipeline
    step: Step
    event: ObjectEvent
    source: ObjectInfo  # the object as it is now (from the event, for a removal)
    region: str
    qualifier: str | None  # the alias or version the step named, if it runs one
    params: dict[str, Any]
    output_bucket: str
    provenance: dict[str, str]  # metadata every output carries
    payload: dict[str, Any] | RecordBatch | None = None  # the event, when it is not an object's (runtime/direct.py)

    def output_key(self, name: str) -> str:
        """The key output ``name`` is written to."""
        return render_key(self.pipeline.output.key, pipeline=self.pipeline.name, bucket=self.event.bucket,
                          key=self.event.key, name=name)

    def lambda_event(self) -> dict[str, Any]:
        """The event the handler gets: AWS's S3 event of the one object, or the payload it was invoked with."""
        if self.payload is not None:
            return lambda_event(self.payload)
        return {"Records": [self.event.to_record(region=self.region, configuration_id=self.pipeline.name)]}


GONE = "the object no longer exists"
SUPERSEDED = "superseded: the object changed since this notification"


@dataclass(frozen=True)
class SourceSkip:
    """Why a step does not run on its object (picklable: a runner reports it to the worker).

    ``changed``: the notified version is no longer current (its successor
    gets a job of its own); ``current``: the object as it is now, when the
    check saw it (a conditional read that failed did not: the worker asks).
    """

    reason: str
    changed: bool = False
    current: ObjectInfo | None = None


class SourceSkipped(Exception):
    """Raised by :func:`plan_step` when the HEAD it made says the step does not run."""

    def __init__(self, skip: SourceSkip) -> None:
        super().__init__(skip.reason)
        self.skip = skip


def source_verdict(info: ObjectInfo, event: ObjectEvent, pipeline: str) -> str | None:
    """Why a step of ``pipeline`` for ``event`` does not run on the object ``info`` describes (None: it runs).

    A notification with a version id names its version for the job's key; one
    without is judged by its etag (dispatch supersedes by sequencer).
    """
    if info.metadata.get(PROVENANCE_PIPELINE) == pipeline:
        return f"the object was written by pipeline {pipeline!r} itself"
    if event.version_id is None and event.etag and info.etag != event.etag:
        return SUPERSEDED
    return None


def open_source(storage: Storage, event: ObjectEvent, pipeline: str) -> tuple[ObjectInfo, IO[bytes]] | SourceSkip:
    """The step's object checked and opened with one request, or why the step does not run.

    Raises StorageError when the store fails (the step is retried as any failure).
    """
    etag = event.etag if event.version_id is None and event.etag else None
    try:
        found = storage.open_if(event.bucket, event.key, etag)
    except ObjectNotFound:
        return SourceSkip(GONE)
    if found is None:
        return SourceSkip(SUPERSEDED, changed=True)
    reason = source_verdict(found[0], event, pipeline)
    if reason is not None:
        found[1].close()
        return SourceSkip(reason, changed=reason == SUPERSEDED, current=found[0])
    return found


def head_source(storage: Storage, event: ObjectEvent, pipeline: str) -> ObjectInfo | SourceSkip:
    """The step's object checked with a HEAD (for a runner that reads it through its own client)."""
    try:
        info = storage.head(event.bucket, event.key)
    except ObjectNotFound:
        return SourceSkip(GONE)
    reason = source_verdict(info, event, pipeline)
    if reason is not None:
        return SourceSkip(reason, changed=reason == SUPERSEDED, current=info)
    return info


def plan_step(service: Service, request: StepRequest, spec: FunctionSpec) -> StepPlan:
    """Where the step of ``request`` reads and writes (``spec``: the function the worker resolved for it).

    A request whose source is still to be checked (``check_source``) is
    checked here with a HEAD: SourceSkipped if the step must not run.
    """
    pipeline = service.pipeline(request.pipeline)
    if pipeline is None:
        raise ConfigError(f"pipeline {request.pipeline!r} is no longer configured")
    step = pipeline.steps[request.step_index]
    event = ObjectEvent.from_dict(request.event)
    source = request.source
    if request.check_source:
        checked = head_source(service.storage, event, pipeline.name)
        if isinstance(checked, SourceSkip):
            raise SourceSkipped(checked)
        source = checked
    source = source or ObjectInfo(event.bucket, event.key, event.size or 0, event.etag or "")
    _, _, qualifier = step.function.partition(":")
    return StepPlan(
        pipeline=pipeline, step=step, event=event, source=source, region=aws_region(service.settings),
        qualifier=qualifier if qualifier and spec.version != "$LATEST" else None,
        params=service.params_for(step),
        output_bucket=pipeline.output.bucket.replace("{bucket}", event.bucket),
        provenance={
            "fileproc-source-bucket": event.bucket,
            "fileproc-source-key": quote(event.key, safe="/"),  # S3 metadata must be ASCII
            "fileproc-source-etag": source.etag,
            PROVENANCE_PIPELINE: pipeline.name,
        },
        payload=request.payload)


_storage: Storage | None = None


def _runner_storage(service: Service) -> Storage:
    # One client per runner process, reused by every step it runs (connections do not survive fork).
    global _storage
    if _storage is None:
        _storage = open_storage(service.settings)
    return _storage


def invoke(service: Service, request: StepRequest, spec: FunctionSpec) -> dict[str, Any]:
    """Run the step's handler; returns outputs, bytes in/out, the return value or the error.

    ``spec`` is the function the worker resolved for the step.
    """
    storage = _runner_storage(service)
    opened: IO[bytes] | None = None
    if request.check_source:  # one conditional read: the check, and the handler's input
        event = ObjectEvent.from_dict(request.event)
        try:
            checked = open_source(storage, event, request.pipeline)
        except StorageError as exc:
            return {"error": _error(exc), "result": None, "outputs": [], "bytes_read": 0, "bytes_written": 0}
        if isinstance(checked, SourceSkip):
            return {"skipped": checked, "error": None, "result": None, "outputs": [], "bytes_read": 0,
                    "bytes_written": 0}
        info, opened = checked
        request = replace(request, source=info, check_source=False)
    plan = plan_step(service, request, spec)
    scratch = Path(request.scratch_dir)  # made only if the step uses it: most never do
    writer = OutputWriter(storage, plan.output_bucket, plan.output_key, plan.provenance)
    reader = InputObject(storage, plan.source, scratch, opened)
    context = Context(
        aws_request_id=request.request_id,
        function_name=spec.name,
        memory_limit_in_mb=str(request.memory_mb),
        deadline=time.monotonic() + request.timeout,
        params=plan.params,
        input=reader,
        output=writer,
        storage=storage,
        logger=logging.getLogger(f"fileproc.function.{spec.name}"),
        pipeline=plan.pipeline.name,
        event=plan.event,
        scratch=scratch,
        function_version=spec.version,
        region=plan.region,
        qualifier=plan.qualifier,
    )
    outcome: dict[str, Any] = {"error": None, "result": None}
    try:  # the scratch folder is removed by the worker (runner.execute), however the step ends
        outcome["result"] = _plain(spec.handler(plan.lambda_event(), context))
    except Exception as exc:  # reported to the worker, which decides
        outcome["error"] = _error(exc)
    finally:
        reader.close()  # the input it was given and never read
    return step_outcome(outcome, writer, reader)


def _error(exc: Exception) -> dict[str, Any]:
    return {"kind": kind_of(exc), "type": type(exc).__name__, "message": str(exc) or type(exc).__name__,
            "traceback": "".join(traceback.format_exception(exc))[-8000:]}


def _plain(value: Any) -> Any:
    """The handler's return value if it is JSON-shaped, else its repr (it is recorded on the attempt)."""
    import json

    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)[:2000]
    return value


__all__ = [
    "GONE", "SUPERSEDED", "SourceSkip", "SourceSkipped", "StepPlan", "head_source", "invoke", "open_source",
    "plan_step", "source_verdict",
]
