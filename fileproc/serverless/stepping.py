"""The ``deployed`` kind of function (``fileproc functions deploy``): what it adds around one step.

- :class:`DeployedKind`: its runners are fresh interpreters holding nothing
  of the worker (:func:`runner_for`), sent each step as plain data
  (:func:`invocation`); a step its runner died in keeps its log
  (:func:`with_unfinished_log`);
- :class:`DeployedPolicy`: the function's own retries, backoff, maximum
  event age, dead letter and destinations, for the step's end.

Registered with the service's functions by the composition root
(:mod:`fileproc.app`); :func:`~fileproc.runtime.runner.run_step` calls it
through :class:`~fileproc.functions.kinds.FunctionKind`.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from fileproc.functions.kinds import StepPolicy, backoff
from fileproc.functions.steps import ChildResult, RunnerStart, StepRequest
from fileproc.runtime.invoke import plan_step
from fileproc.runtime.kinds import runner_store
from fileproc.serverless.lambda_runtime import LambdaHandler

if TYPE_CHECKING:
    from fileproc.functions import FunctionSpec
    from fileproc.runtime.pool import Spawn
    from fileproc.service import Service
    from fileproc.state import Job
    from fileproc.state.deployments import FunctionVersion

DEPLOYED = "deployed"


class DeployedKind:
    """Deployed functions: each version's runners are fresh interpreters with credentials of their own."""

    name = DEPLOYED
    report_level = logging.INFO  # as Lambda's REPORT goes to CloudWatch
    step_scratch = False  # (a runner's scratch is its own folder's)

    def __init__(self, service: Service) -> None:
        self.service = service

    def start(self, spec: FunctionSpec, request: StepRequest) -> RunnerStart:
        """Its package and requirements on this host (once), then a runner with fresh enough credentials."""
        handler_of(spec).prepare(self.service.storage)
        return RunnerStart(invocation(self.service, request, spec), spawn=runner_for(self.service, spec, request))

    def policy(self, spec: FunctionSpec, job: Job, request_id: str) -> StepPolicy:
        return DeployedPolicy(self.service, version_of(spec), job, request_id)

    def unfinished(self, spec: FunctionSpec, result: ChildResult, request: StepRequest) -> ChildResult:
        return with_unfinished_log(result, request, spec)


def handler_of(spec: FunctionSpec) -> LambdaHandler:
    """The handler of deployed ``spec``: its version, and how its runners start."""
    handler = spec.handler
    if not isinstance(handler, LambdaHandler):
        raise TypeError(f"{spec.name!r} is of kind {spec.kind!r} but has no deployed handler")
    return handler


def version_of(spec: FunctionSpec) -> FunctionVersion:
    """The deployed version ``spec`` runs."""
    return handler_of(spec).version


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
    storage = runner_store(settings)
    if settings.storage.backend == "s3":
        invoked = ObjectEvent.from_dict(request.event).bucket if is_direct(request.pipeline) else None
        scope = credentials.scope_for(settings, list(service.pipelines.values()), spec.name, invoked_bucket=invoked,
                                      outputs=request.payload is not None)
        own = credentials.grant(settings, spec.name, scope, request.timeout + credentials.MARGIN_SECONDS)
        storage |= {"access_key": own.access_key, "secret_key": own.secret_key, "session_token": own.session_token}
    return handler_of(spec).spawn(request.memory_mb, storage)


def invocation(service: Service, request: StepRequest, spec: FunctionSpec) -> dict[str, Any]:
    """One step of a deployed function as plain data: all its runner needs to build Lambda's event and context."""
    from fileproc.serverless.bootstrap import NAME_SLOT

    plan = plan_step(service, request, spec)
    return {
        "request_id": request.request_id, "pipeline": plan.pipeline.name, "event": request.event,
        "source": plan.source, "payload": request.payload,
        "record": None if request.payload is not None else plan.lambda_event()["Records"][0],
        "timeout": request.timeout, "memory_mb": request.memory_mb, "region": plan.region,
        "params": plan.params,
        "qualifier": plan.qualifier, "output_bucket": plan.output_bucket,
        "output_key": plan.output_key(NAME_SLOT), "provenance": plan.provenance,
    }


def with_unfinished_log(result: ChildResult, request: StepRequest, spec: FunctionSpec) -> ChildResult:
    """A step its runner did not report (timed out, died, stopped): its log, from what the runner had written.

    START, what the invocation printed, why it ended (Lambda's ``Task timed
    out after N seconds``, else the reason the attempt records) and END; the
    REPORT line is added with the attempt's metering, as for any step.
    """
    if result.output is None:
        return result
    version = version_of(spec)
    from fileproc.serverless.logformat import unfinished_log

    log = unfinished_log(result.output, request.request_id, str(version.version),
                         timeout=request.timeout if result.timed_out else None,
                         error=f"{result.error_type}: {result.error}")
    return replace(result, value={**(result.value or {}), "log": log})


class DeployedPolicy(StepPolicy):
    """A deployed function's own retries, maximum event age, dead letter and destinations for one step."""

    def __init__(self, service: Service, version: FunctionVersion, job: Job, request_id: str) -> None:
        self.service, self.version, self.job, self.request_id = service, version, job, request_id
        self._owes = False  # a destination record is owed once the step's end is committed

    def too_old(self) -> str | None:
        """Why the event is dropped for its age (None: it is young enough)."""
        age = (datetime.now(UTC) - self.job.created_at).total_seconds()
        if age <= self.version.max_event_age:
            return None
        return (f"step {self.version.function!r}: the event is {age:.0f} s old, past its maximum age of "
                f"{self.version.max_event_age:g} s: not tried again")

    def retry_delay(self, failures: int) -> float:
        """Seconds before retry number ``failures``: ``--backoff``, doubled each time, with jitter."""
        return backoff(failures, first=self.version.backoff)

    def ended(self, outcome: str, condition: str | None, result: Any, failures: int) -> dict[str, Any]:
        """Its dead letter (failed for good) and the record owed to its destination (ended for good)."""
        record = self.record(outcome, condition, result, failures)
        if record is None:
            return {}
        extra: dict[str, Any] = {"delivery": self.delivery(outcome, record)}
        if outcome == "failed":
            extra["dead_letter"] = self.dead_letter(record)
        self._owes = extra["delivery"] is not None
        return extra

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

    def committed(self) -> None:
        """Right after the step's end was committed: POST its destination record (the relay retries it)."""
        if self._owes:
            from fileproc.serverless.destinations import deliver_soon

            deliver_soon(self.service.db, self.request_id)

__all__ = ["DEPLOYED", "DeployedKind", "DeployedPolicy", "invocation", "runner_for", "version_of",
           "with_unfinished_log"]
