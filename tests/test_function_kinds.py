"""A new kind of function plugs into run_step through its FunctionKind and StepPolicy, with no change to the runtime."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Any

from fileproc import dispatch
from fileproc.config import load_settings
from fileproc.functions import FunctionSpec
from fileproc.functions.kinds import StepPolicy, backoff
from fileproc.functions.registry import Registry
from fileproc.functions.resolver import Functions
from fileproc.functions.steps import ChildResult, RunnerStart, StepRequest
from fileproc.runtime.runner import run_step
from fileproc.service import Service
from fileproc.state import Job
from tests.procs import write_config


def _echo(request: StepRequest) -> dict[str, Any]:
    """What the kind's runner does for each step (a fork of this process)."""
    failing = request.event["key"].startswith("fail")
    return {"error": {"kind": "error", "type": "RuntimeError", "message": "asked to fail", "traceback": None}
            if failing else None,
            "result": None if failing else {"echoed": request.request_id}, "outputs": [],
            "bytes_read": 0, "bytes_written": 0}


class EchoPolicy(StepPolicy):
    def __init__(self, kind: EchoKind, job: Job) -> None:
        self.kind, self.job = kind, job

    def too_old(self) -> str | None:
        return "too old for an echo" if self.job.key.startswith("old") else None

    def retry_delay(self, failures: int) -> float:
        return 7.0

    def committed(self) -> None:
        self.kind.committed.append(self.job.key)


class EchoKind:
    """A kind no code in the runtime knows about."""

    name = "echo"
    report_level = logging.INFO
    step_scratch = True

    def __init__(self) -> None:
        self.started: list[str] = []
        self.committed: list[str] = []

    def start(self, spec: FunctionSpec, request: StepRequest) -> RunnerStart:
        self.started.append(request.event["key"])
        return RunnerStart(request, work=_echo)

    def policy(self, spec: FunctionSpec, job: Job, request_id: str) -> StepPolicy:
        return EchoPolicy(self, job)

    def unfinished(self, spec: FunctionSpec, result: ChildResult, request: StepRequest) -> ChildResult:
        return result


def echo_service(tmp_path: Path) -> tuple[Service, EchoKind]:
    """A service composed by hand, as :func:`fileproc.app.build` composes one, with the echo kind plugged in."""
    config = write_config(tmp_path / "fileproc.toml", {
        "data_dir": str(tmp_path / "data"),
        "pipelines": [{"name": "p", "match": {"bucket": "inbox"}, "steps": [{"function": "echo", "retries": 1}],
                       "output": {"bucket": "out"}}]})
    registry = Registry()
    registry.add(FunctionSpec("echo", lambda event, context: None, queue="echo", kind="echo"))
    functions = Functions(registry)
    kind = EchoKind()
    functions.add_kind(kind)
    service = Service(load_settings(config, env={}), functions)
    service.submit = partial(dispatch.submit_many, service)
    service.prepare_buckets()
    return service, kind


def submitted(service: Service, key: str) -> Job:
    from fileproc.objects import event_for

    info = service.storage.put("inbox", key, b"x")
    (item,) = service.submit([event_for("inbox", key, info, source="test")], send=False)
    return item.job  # type: ignore[no-any-return]


def test_a_new_kind_runs_its_steps_through_its_own_runner_and_policy(tmp_path: Path) -> None:
    service, kind = echo_service(tmp_path)
    job = submitted(service, "a.txt")
    assert run_step(service, job.id, 0, "w").status == "succeeded"
    done = service.db.get_job(job.id)
    assert done is not None and done.attempts[-1].result == {"echoed": f"{job.id}-0-{done.attempts[-1].id}"}
    assert kind.started == ["a.txt"] and kind.committed == ["a.txt"]  # once, after the end was recorded
    assert done.attempts[-1].billed_ms is not None  # metered like any step


def test_the_policy_decides_the_age_and_the_backoff(tmp_path: Path) -> None:
    service, kind = echo_service(tmp_path)
    old = submitted(service, "old.txt")
    outcome = run_step(service, old.id, 0, "w")
    assert outcome.status == "failed" and outcome.detail == "too old for an echo"
    assert kind.started == []  # dropped before any runner started

    failing = submitted(service, "fail.txt")
    outcome = run_step(service, failing.id, 0, "w")
    assert outcome.status == "retry" and outcome.retry_in == 7.0  # the kind's delay, not the default backoff


def test_the_default_backoff_doubles_from_two_seconds() -> None:
    delays = [backoff(n) for n in (1, 2, 3)]
    assert 1.6 <= delays[0] <= 2.4 and 3.2 <= delays[1] <= 4.8 and 6.4 <= delays[2] <= 9.6
    assert backoff(20) == 300.0 and 4.0 <= backoff(1, first=5.0) <= 6.0
