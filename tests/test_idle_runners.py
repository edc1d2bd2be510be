"""Scale to zero and provisioned concurrency: idle runners are stopped, provisioned ones kept warm.

In this process first (each step's runner forked from it, as from a worker's
pool process), then through a real ``fileproc serve``: a deployed function
with ``--provisioned 1`` has its runner started before its first invocation
(which is warm), reported by ``functions show`` and ``/metrics``; another
one's runner is stopped once idle, and its next invocation starts cold and
works.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fileproc.app import build
from fileproc.config import load_settings
from fileproc.metrics.runners import RunnerCollector
from fileproc.runtime.pool import PROVISIONED, WARM, pool
from fileproc.runtime.runner import run_step
from fileproc.runtime.slots import Provisioner
from fileproc.service import Service
from tests.procs import (
    FUNCTIONS_DIR,
    fileproc,
    free_port,
    process_running,
    running,
    wait_for,
    wait_healthy,
    write_config,
)
from tests.test_warm_runners import step, upload


@pytest.fixture(autouse=True)
def empty_pool() -> Iterator[None]:
    """This process's runner pool starts empty (earlier tests' runners would count) and is emptied after."""
    pool().close()
    yield
    pool().close()


def make_service(tmp_path: Path, runtime: dict[str, Any]) -> Service:
    config = write_config(tmp_path / "fileproc.toml", {
        "data_dir": str(tmp_path / "data"),
        "runtime": runtime,
        "functions": {"paths": [str(FUNCTIONS_DIR)]},
        "pipelines": [{"name": "inbox", "match": {"bucket": "inbox"}, "steps": [{"function": "slow"}],
                       "output": {"bucket": "out", "key": "{key}/{name}"}}],
    })
    service = build(load_settings(config, env={}))
    service.prepare_buckets()
    return service


def metrics(service: Service) -> dict[tuple[str, str], float]:
    """``fileproc_runners`` as ``/metrics`` shows it: by function and state."""
    (family,) = RunnerCollector(service).collect()
    return {(s.labels["function"], s.labels["state"]): s.value for s in family.samples if s.value}


def runner_pid(service: Service, key: str) -> tuple[int, bool]:
    """Run the pipeline's step on a new object: its runner's pid, and whether it was a cold start."""
    result = step(service, "inbox", key)
    assert result.ok and not (result.value or {}).get("error"), result
    assert result.runner_pid
    return result.runner_pid, result.cold


def test_a_runner_idle_for_idle_seconds_is_stopped_and_the_next_step_starts_cold(tmp_path: Path) -> None:
    service = make_service(tmp_path, {"idle_seconds": 1.0})
    first, cold = runner_pid(service, "a.bin")
    assert cold
    again, cold = runner_pid(service, "b.bin")
    assert (again, cold) == (first, False)  # within idle_seconds: the same warm runner
    Provisioner(service).look()  # what each worker process does every few seconds: say what it holds
    assert metrics(service) == {("slow", "warm"): 1}
    wait_for(lambda: not process_running(first), 15, "the idle runner to be stopped")
    assert pool().counts() == {}
    Provisioner(service).look()
    assert metrics(service) == {}
    job = upload(service, "inbox", "c.bin")  # the whole step, as a worker runs it
    assert run_step(service, job.id, 0, "w").status == "succeeded"
    done = service.db.get_job(job.id)
    assert done is not None and [a.cold_start for a in done.attempts] == [True]


def test_reaping_never_takes_a_runner_being_handed_a_step(tmp_path: Path) -> None:
    """Steps keep arriving just as their runner's idle time runs out: none fails or is lost."""
    service = make_service(tmp_path, {"idle_seconds": 0.05})
    results: list[bool] = []
    colds: list[bool] = []

    def steps(lane: int) -> None:
        for n in range(12):
            result = step(service, "inbox", f"{lane}-{n}.bin")
            results.append(result.ok and not (result.value or {}).get("error"))
            colds.append(result.cold)
            threading.Event().wait(0.03 + 0.01 * (n % 5))  # around the idle time, either side

    lanes = [threading.Thread(target=steps, args=(lane,)) for lane in range(2)]
    for lane in lanes:
        lane.start()
    for lane in lanes:
        lane.join(120)
    assert len(results) == 24 and all(results)
    assert any(colds) and not all(colds)  # some runners were reaped, some reused


def test_a_provisioned_runner_is_started_ahead_and_never_reaped(tmp_path: Path) -> None:
    service = make_service(tmp_path, {"idle_seconds": 0.5, "provisioned": {"slow": 1}})
    provisioner = Provisioner(service)
    provisioner.look()  # what a worker's pool process does as it starts
    assert pool().counts() == {("slow", PROVISIONED): 1}
    threading.Event().wait(1.5)  # three times idle_seconds
    assert pool().counts() == {("slow", PROVISIONED): 1}
    first, cold = runner_pid(service, "a.bin")
    assert not cold  # the first step of the function found its runner warm
    threading.Event().wait(1.5)
    assert process_running(first)
    provisioner.look()
    assert pool().counts() == {("slow", PROVISIONED): 1}  # still that one: nothing more started
    service.settings.runtime.provisioned = {}
    provisioner.look()  # no longer provisioned: an ordinary warm runner, stopped once idle
    wait_for(lambda: not process_running(first), 15, "the runner no longer provisioned to be stopped")
    assert pool().counts().get(("slow", WARM), 0) == 0


# --- through fileproc serve ----------------------------------------------------------------------

HANDLER = "import os\n\ndef handler(event, context):\n    return {'pid': os.getpid()}\n"
TOKEN = "idle-runners-admin-token-0123"


def runners(port: int) -> dict[tuple[str, str], float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {TOKEN}"},
                     timeout=10).text
    found = re.findall(r'^fileproc_runners\{function="([^"]+)",state="([^"]+)"\} ([0-9.]+)$', text, re.MULTILINE)
    return {(function, state): float(count) for function, state, count in found}


def invoke(port: int, name: str) -> dict[str, Any]:
    answer = httpx.post(f"http://127.0.0.1:{port}/functions/{name}/invoke", json={"bucket": "inbox", "key": "a.txt"},
                        headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["status"] == "succeeded", body
    return body


def test_serve_keeps_provisioned_runners_and_stops_idle_ones(tmp_path: Path) -> None:
    config = write_config(tmp_path / "fileproc.toml", {
        "data_dir": str(tmp_path / "data"), "log_level": "INFO",
        "api": {"admin_token": TOKEN},
        "worker": {"concurrency": 1},  # one pool process: one provisioned runner per function
        "runtime": {"idle_seconds": 2.0},
        "reconcile": {"enabled": False},
    })
    (tmp_path / "fn").mkdir()
    (tmp_path / "fn" / "app.py").write_text(HANDLER)
    deployed = fileproc(config, "functions", "deploy", str(tmp_path / "fn"), "--name", "keep", "--handler",
                        "app.handler", "--provisioned", "1")
    assert "provisioned" in deployed.stdout or deployed.returncode == 0
    fileproc(config, "functions", "deploy", str(tmp_path / "fn"), "--name", "drop", "--handler", "app.handler")
    shown = json.loads(fileproc(config, "functions", "show", "keep").stdout)
    assert shown["provisioned"] == 1
    (tmp_path / "data" / "buckets" / "inbox").mkdir(parents=True)
    (tmp_path / "data" / "buckets" / "inbox" / "a.txt").write_text("x")
    service = build(load_settings(config, env={}))
    port = free_port()
    with running(config, ["serve", "--port", str(port)], tmp_path / "serve.log") as serve:
        wait_healthy(port, serve, 60)
        # Started ahead, before any invocation: reported by `functions show` and /metrics.
        wait_for(lambda: json.loads(fileproc(config, "functions", "show", "keep").stdout)["runners"]
                 == {"provisioned": 1, "warm": 0}, 60, "keep's provisioned runner to start", serve)
        assert runners(port).get(("keep", "provisioned")) == 1

        kept = invoke(port, "keep")
        dropped = invoke(port, "drop")
        cold = {name: [a.cold_start for a in job.attempts]
                for name, job in (("keep", service.db.get_job(kept["invocation"])),
                                  ("drop", service.db.get_job(dropped["invocation"]))) if job is not None}
        assert cold == {"keep": [False], "drop": [True]}  # keep's first invocation was warm

        # idle_seconds later drop's runner is gone; keep's stays.
        wait_for(lambda: not process_running(dropped["result"]["pid"]), 60, "drop's idle runner to stop", serve)
        assert kept["result"]["pid"] != dropped["result"]["pid"]
        assert process_running(kept["result"]["pid"])
        wait_for(lambda: runners(port).get(("drop", "warm"), 0) == 0, 30, "/metrics to say drop has none", serve)
        assert runners(port).get(("keep", "provisioned")) == 1
        shown = json.loads(fileproc(config, "functions", "show", "drop").stdout)
        assert shown["runners"] == {"provisioned": 0, "warm": 0}

        again = invoke(port, "drop")  # a cold start again, that works
        job = service.db.get_job(again["invocation"])
        assert job is not None and [a.cold_start for a in job.attempts] == [True]
        assert again["result"]["pid"] != dropped["result"]["pid"]
