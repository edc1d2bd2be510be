"""Inside the step's process: build the context, call the handler, report what happened.

Everything here runs in the runner process (a child of the worker), so what
it returns to the worker is plain picklable data: outputs, usage, the
handler's return value, or the error, classified here because an exception
object may not survive pickling. (This is a registered function's step, in
a runner forked from the worker; a deployed function's runner is a fresh
interpreter that builds its context itself: :mod:`fileproc.serverless.bootstrap`.)
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fileproc.errors import kind_of
from fileproc.events import ObjectEvent
from fileproc.functions import Context, FunctionSpec, InputObject, OutputWriter, step_outcome
from fileproc.functions.aws import aws_region
from fileproc.rules import PROVENANCE_PIPELINE, render_key
from fileproc.service import Service
from fileproc.storage import ObjectInfo, Storage, open_storage


@dataclass(frozen=True)
class StepRequest:
    """What a runner needs to run one step: picklable, so it can cross into a warm runner."""

    request_id: str
    pipeline: str
    step_index: int
    event: dict[str, Any]
    source: ObjectInfo | None  # the object as it is now (None for a removal event)
    timeout: float
    memory_mb: int
    scratch_dir: str  # the step's private folder, removed when it ends


_storage: Storage | None = None


def _runner_storage(service: Service) -> Storage:
    # One client per runner process, reused by every step it runs (connections do not survive fork).
    global _storage
    if _storage is None:
        _storage = open_storage(service.settings)
    return _storage


def invoke(service: Service, request: StepRequest, spec: FunctionSpec | None = None) -> dict[str, Any]:
    """Run the step's handler; returns outputs, bytes in/out, the return value or the error.

    ``spec`` is the function the worker resolved for the step (a deployed
    function's version can change between two lookups: the runner runs the
    one it was started for).
    """
    pipeline = service.pipelines[request.pipeline]
    step = pipeline.steps[request.step_index]
    spec = spec or service.spec(step)
    event = ObjectEvent.from_dict(request.event)
    storage = _runner_storage(service)
    scratch = Path(request.scratch_dir)  # made only if the step uses it: most never do
    source = request.source or ObjectInfo(event.bucket, event.key, event.size or 0, event.etag or "")
    provenance = {
        "fileproc-source-bucket": event.bucket,
        "fileproc-source-key": quote(event.key, safe="/"),  # S3 metadata must be ASCII
        "fileproc-source-etag": source.etag,
        PROVENANCE_PIPELINE: pipeline.name,
    }
    output_bucket = pipeline.output.bucket.replace("{bucket}", event.bucket)
    writer = OutputWriter(
        storage, output_bucket,
        lambda name: render_key(pipeline.output.key, pipeline=pipeline.name, bucket=event.bucket,
                                key=event.key, name=name),
        provenance,
    )
    reader = InputObject(storage, source, scratch)
    _, _, qualifier = step.function.partition(":")
    region = aws_region(service.settings)
    context = Context(
        aws_request_id=request.request_id,
        function_name=spec.name,
        memory_limit_in_mb=str(request.memory_mb),
        deadline=time.monotonic() + request.timeout,
        params=service.params_for(step),
        input=reader,
        output=writer,
        storage=storage,
        logger=logging.getLogger(f"fileproc.function.{spec.name}"),
        pipeline=pipeline.name,
        event=event,
        scratch=scratch,
        function_version=spec.version,
        region=region,
        qualifier=qualifier if qualifier and spec.version != "$LATEST" else None,
    )
    lambda_event = {"Records": [event.to_record(region=region, configuration_id=pipeline.name)]}
    outcome: dict[str, Any] = {"error": None, "result": None}
    try:  # the scratch folder is removed by the worker (runner.execute), however the step ends
        outcome["result"] = _plain(spec.handler(lambda_event, context))
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
