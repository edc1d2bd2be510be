"""What a deployed function adds around one step (called from :mod:`fileproc.runtime.runner`).

- :func:`warm_up`: what a new (forked) runner of a registered function does
  before its first step (the AWS variables pointing boto3 at the store);
- :func:`invocation` and :func:`runner_for`: a deployed version's step as
  plain data, and how its runner (a fresh interpreter) starts;
- :func:`with_unfinished_log`: the log of a step its runner died in;
- :class:`ReservedSlot`: a unit of the function's reserved concurrency, held
  while the step runs;
- :class:`Policy`: the function's own retries, backoff, maximum event age,
  dead letter and destinations, for the step's end.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fileproc.functions import FunctionSpec
from fileproc.runtime.pool import Spawn, warm_hook
from fileproc.sandbox.isolation import runner_tmp

if TYPE_CHECKING:
    from fileproc.config import Settings
    from fileproc.runtime.invoke import StepRequest
    from fileproc.runtime.results import ChildResult
    from fileproc.service import Service
    from fileproc.state import Job
    from fileproc.state.deployments import FunctionVersion

MAX_BACKOFF_SECONDS = 300.0


def deployed_version(spec: FunctionSpec) -> FunctionVersion | None:
    """The deployed version ``spec`` runs (None for a registered function)."""
    return getattr(spec.handler, "version", None) if getattr(spec.handler, "lambda_style", False) else None


def warm_up(service: Service, spec: FunctionSpec) -> Callable[[], None]:
    """What a new runner of a registered function does before its first step.

    It gets the standard AWS variables pointing boto3 at the configured
    store, with fileproc's own keys (it is a fork of the worker, which
    holds them anyway: its code is the operator's), then its module's
    ``warm()`` hook runs. (A deployed function's runner is not forked and
    gets credentials of its own: see :func:`runner_for`.)
    """
    from fileproc.functions.aws import key_variables, store_variables

    module_hook = warm_hook(spec.handler)
    variables = store_variables(service.settings) | key_variables(_store(service.settings))

    def warm_registered() -> None:
        os.environ.update(variables)
        if module_hook is not None:
            module_hook()

    return warm_registered


def runner_for(service: Service, spec: FunctionSpec, request: StepRequest) -> Spawn:
    """How a runner of deployed ``spec`` for ``request`` starts: a fresh interpreter that holds nothing of the worker.

    On S3 its credentials are the function's own (:mod:`.credentials`),
    scoped to what its pipelines (or this direct invocation) read and
    write, and valid past the step's timeout: renewed ones make a new runner.
    """
    from fileproc.events import ObjectEvent
    from fileproc.serverless import credentials
    from fileproc.serverless.invocations import is_direct

    settings = service.settings
    storage = _store(settings)
    if settings.storage.backend == "s3":
        invoked = ObjectEvent.from_dict(request.event).bucket if is_direct(request.pipeline) else None
        scope = credentials.scope_for(settings, list(service.pipelines.values()), spec.name, invoked_bucket=invoked)
        own = credentials.grant(settings, spec.name, scope, request.timeout + credentials.MARGIN_SECONDS)
        storage |= {"access_key": own.access_key, "secret_key": own.secret_key, "session_token": own.session_token}
    return spec.handler.spawn(request.memory_mb, storage)  # type: ignore[attr-defined,no-any-return]


def _store(settings: Settings) -> dict[str, Any]:
    """How a runner opens ``context.storage`` (:func:`.bootstrap.open_storage`); on S3 with fileproc's keys."""
    if settings.storage.backend == "s3":
        return {"backend": "s3", "endpoint": settings.storage.endpoint, "secure": settings.storage.secure,
                "access_key": settings.storage.access_key.get_secret_value(),
                "secret_key": settings.storage.secret_key.get_secret_value(), "region": settings.storage.region or None}
    return {"backend": "local", "buckets": str(settings.buckets_dir.resolve()),
            "tmp": str(runner_tmp(settings.buckets_dir.resolve()))}


def invocation(service: Service, request: StepRequest, spec: FunctionSpec) -> dict[str, Any]:
    """One step of a deployed function as plain data: all its runner needs to build Lambda's event and context."""
    from urllib.parse import quote

    from fileproc.events import ObjectEvent
    from fileproc.functions.aws import aws_region
    from fileproc.rules import PROVENANCE_PIPELINE, render_key
    from fileproc.serverless.bootstrap import NAME_SLOT
    from fileproc.storage import ObjectInfo

    pipeline = service.pipelines[request.pipeline]
    step = pipeline.steps[request.step_index]
    event = ObjectEvent.from_dict(request.event)
    source = request.source or ObjectInfo(event.bucket, event.key, event.size or 0, event.etag or "")
    region = aws_region(service.settings)
    _, _, qualifier = step.function.partition(":")
    return {
        "request_id": request.request_id, "pipeline": pipeline.name, "event": request.event, "source": source,
        "record": event.to_record(region=region, configuration_id=pipeline.name),
        "timeout": request.timeout, "memory_mb": request.memory_mb, "region": region,
        "scratch_dir": str(Path(request.scratch_dir).resolve()), "params": service.params_for(step),
        "qualifier": qualifier if qualifier and spec.version != "$LATEST" else None,
        "output_bucket": pipeline.output.bucket.replace("{bucket}", event.bucket),
        "output_key": render_key(pipeline.output.key, pipeline=pipeline.name, bucket=event.bucket, key=event.key,
                                 name=NAME_SLOT),
        "provenance": {
            "fileproc-source-bucket": event.bucket,
            "fileproc-source-key": quote(event.key, safe="/"),  # S3 metadata must be ASCII
            "fileproc-source-etag": source.etag,
            PROVENANCE_PIPELINE: pipeline.name,
        },
    }


def with_unfinished_log(result: ChildResult, request: StepRequest, spec: FunctionSpec) -> ChildResult:
    """A step its runner did not report (timed out, died, stopped): its log, from what the runner had written.

    START, what the invocation printed, why it ended (Lambda's ``Task timed
    out after N seconds``, else the reason the attempt records) and END; the
    REPORT line is added with the attempt's metering, as for any step.
    """
    version = deployed_version(spec)
    if result.output is None or version is None:
        return result
    from fileproc.serverless.lambda_runtime import unfinished_log

    log = unfinished_log(result.output, request.request_id, str(version.version),
                         timeout=request.timeout if result.timed_out else None,
                         error=f"{result.error_type}: {result.error}")
    return replace(result, value={**(result.value or {}), "log": log})


class ReservedSlot:
    """A unit of a deployed function's reserved concurrency, held while its step runs (if it has a limit).

    Held at most ``seconds`` (the step's timeout plus a lease): a worker that
    dies holding one loses it then, as its step's lease runs out.
    """

    def __init__(self, service: Service, spec: FunctionSpec, holder: str, seconds: float) -> None:
        self.service, self.spec, self.holder, self.seconds = service, spec, holder, seconds
        self.held = False

    def take(self) -> bool:
        """Whether the step may run now (always, for a function without reserved concurrency)."""
        if not self.spec.concurrency:
            return True
        from fileproc.state.deployments import take_slot

        self.held = take_slot(self.service.db, self.spec.name, self.holder, self.seconds)
        return self.held

    def give(self) -> None:
        if self.held:
            from fileproc.state.deployments import give_slot

            give_slot(self.service.db, self.spec.name, self.holder)
            self.held = False


class Policy:
    """A deployed function's own retries, maximum event age, dead letter and destinations for one step."""

    def __init__(self, service: Service, version: FunctionVersion, job: Job, request_id: str) -> None:
        self.service, self.version, self.job, self.request_id = service, version, job, request_id

    def too_old(self, function: str) -> str | None:
        """Why the event is dropped for its age (None: it is young enough)."""
        age = (datetime.now(UTC) - self.job.created_at).total_seconds()
        if age <= self.version.max_event_age:
            return None
        return (f"step {function!r}: the event is {age:.0f} s old, past its maximum age of "
                f"{self.version.max_event_age:g} s: not tried again")

    def retry_delay(self, failures: int) -> float:
        """Seconds before retry number ``failures``: ``--backoff``, doubled each time, with jitter."""
        return min(MAX_BACKOFF_SECONDS, self.version.backoff * 2.0 ** (failures - 1) * random.uniform(0.8, 1.2))

    def record(self, outcome: str, condition: str | None, result: Any, failures: int) -> dict[str, Any] | None:
        """Lambda's destination record, if the step ended for good (``outcome``: succeeded, next or failed)."""
        if outcome not in ("succeeded", "next", "failed"):
            return None
        from fileproc.functions.aws import aws_region
        from fileproc.serverless.destinations import destination_record

        region = aws_region(self.service.settings)
        event = {"Records": [self.job.object_event.to_record(region=region, configuration_id=self.job.pipeline)]}
        return destination_record(
            self.version, region=region, request_id=self.request_id,
            condition="Success" if outcome != "failed" else condition or "RetriesExhausted",
            event=event, result=result, invoke_count=failures + 1)

    def dead_letter(self, record: dict[str, Any]) -> dict[str, Any]:
        """What the step's end records as its dead letter."""
        return {"function": self.version.function, "version": str(self.version.version),
                "request_id": self.request_id, "condition": record["requestContext"]["condition"], "record": record}

    def delivery(self, outcome: str, record: dict[str, Any]) -> dict[str, Any] | None:
        """What the step's end records as owed to its on-success or on-failure destination (None: it has none)."""
        url = self.version.on_failure if outcome == "failed" else self.version.on_success
        if not url:
            return None
        from fileproc.serverless.destinations import owed

        return owed(url, self.version, record)

    def deliver(self) -> None:
        """Right after the step's end was committed: POST its destination record (the relay retries it)."""
        from fileproc.serverless.destinations import deliver_soon

        deliver_soon(self.service.db, self.request_id)

__all__ = ["Policy", "ReservedSlot", "deployed_version", "invocation", "runner_for", "warm_up",
           "with_unfinished_log"]
