"""One step's inputs and outputs, and a registered function's step run inside its runner.

:func:`plan_step` says where a step reads and writes (its pipeline's output
location, the provenance its outputs carry, its params, Lambda's region and
qualifier): every kind of function starts from it. :func:`invoke` runs in a
registered function's runner (a child of the worker), so what it returns is
plain picklable data: outputs, usage, the handler's return value, or the
error, classified here because an exception object may not survive
pickling. (A deployed function's runner is a fresh interpreter that builds
its context itself: :mod:`fileproc.serverless.bootstrap`.)
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fileproc.errors import ConfigError, kind_of
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


def plan_step(service: Service, request: StepRequest, spec: FunctionSpec) -> StepPlan:
    """Where the step of ``request`` reads and writes (``spec``: the function the worker resolved for it)."""
    pipeline = service.pipeline(request.pipeline)
    if pipeline is None:
        raise ConfigError(f"pipeline {request.pipeline!r} is no longer configured")
    step = pipeline.steps[request.step_index]
    event = ObjectEvent.from_dict(request.event)
    source = request.source or ObjectInfo(event.bucket, event.key, event.size or 0, event.etag or "")
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
    plan = plan_step(service, request, spec)
    storage = _runner_storage(service)
    scratch = Path(request.scratch_dir)  # made only if the step uses it: most never do
    writer = OutputWriter(storage, plan.output_bucket, plan.output_key, plan.provenance)
    reader = InputObject(storage, plan.source, scratch)
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
        outcome["error"] = {"kind": kind_of(exc), "type": type(exc).__name__,
                            "message": str(exc) or type(exc).__name__,
                            "traceback": "".join(traceback.format_exception(exc))[-8000:]}
    return step_outcome(outcome, writer, reader)


def _plain(value: Any) -> Any:
    """The handler's return value if it is JSON-shaped, else its repr (it is recorded on the attempt)."""
    import json

    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)[:2000]
    return value


__all__ = ["StepPlan", "invoke", "plan_step"]
