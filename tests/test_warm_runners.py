"""Warm runners: a function's process is reused for its next step, and replaced when unfit.

Real processes throughout: each step runs in a runner forked from this test
process, as it would from a worker's pool child.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from fileproc import dispatch
from fileproc.app import build
from fileproc.config import load_settings
from fileproc.events import ObjectEvent
from fileproc.functions.steps import ChildResult, StepRequest
from fileproc.runtime.pool import pool
from fileproc.runtime.runner import execute, run_step
from fileproc.service import Service
from fileproc.state import Job
from tests.procs import FUNCTIONS_DIR, Process, process_running, wait_for, write_config


def make_service(tmp_path: Path, pipelines: dict[str, list[dict[str, Any]]]) -> Service:
    """One pipeline per entry, each matching its own bucket (named like the pipeline)."""
    config = write_config(tmp_path / "fileproc.toml", {
        "data_dir": str(tmp_path / "data"),
        "functions": {"paths": [str(FUNCTIONS_DIR)]},
        "pipelines": [{"name": name, "match": {"bucket": name}, "steps": steps,
                       "output": {"bucket": "out", "key": "{key}/{name}"}} for name, steps in pipelines.items()],
    })
    service = build(load_settings(config, env={}))
    service.prepare_buckets()
    return service


def quick(pidfile: Path) -> dict[str, Any]:
    """Params of `slow` that make it quick; it writes its process's pid to ``pidfile``."""
    return {"seconds": 0, "pidfile": str(pidfile)}


def upload(service: Service, bucket: str, key: str, data: bytes = b"x") -> Job:
    info = service.storage.put(bucket, key, data)
    (item,) = dispatch.submit(service, ObjectEvent(bucket, key, size=info.size, etag=info.etag), send=False)
    return item.job


def step(service: Service, pipeline: str, key: str) -> ChildResult:
    """Run the first step of a new job of ``pipeline`` the way run_step does, and say how it ended."""
    job = upload(service, pipeline, key)
    spec = service.spec(service.pipelines[pipeline].steps[0])
    found = service.pipelines[pipeline].steps[0]
    scratch = service.settings.data_dir / "scratch" / f"{os.getpid()}.{job.id}"
    request = StepRequest(f"{job.id}-0-1", pipeline, 0, job.event, None, found.timeout or spec.timeout,
                          found.memory_mb or spec.memory_mb, str(scratch))
    return execute(service, request, cancel=threading.Event())


def test_the_next_step_of_a_function_reuses_its_runner(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    service = make_service(tmp_path, {"inbox": [{"function": "slow", "params": quick(pidfile)}]})
    pids, colds = [], []
    for n in range(3):
        job = upload(service, "inbox", f"{n}.bin")
        assert run_step(service, job.id, 0, "w").status == "succeeded"
        pids.append(int(pidfile.read_text()))
        done = service.db.get_job(job.id)
        assert done is not None
        colds += [a.cold_start for a in done.attempts]
    assert colds == [True, False, False]
    assert len(set(pids)) == 1 and pids[0] != os.getpid()  # one runner, not this process
    assert process_running(pids[0])  # still there, waiting for the next step


def test_a_timed_out_runner_is_replaced_with_everything_it_started(tmp_path: Path) -> None:
    child_pidfile = tmp_path / "child.pid"
    service = make_service(tmp_path, {
        "quick": [{"function": "hang", "timeout": 2, "params": {"pidfile": str(tmp_path / "unused")}}],
        "stuck": [{"function": "hang", "timeout": 2, "params": {"pidfile": str(child_pidfile)}}],
    })
    # Both pipelines run `hang` with the same limits, so they share its runners.
    first = step(service, "stuck", "a.bin")
    assert first.timed_out and first.cold and first.recycled == "timed out"
    assert first.runner_pid is not None and not process_running(first.runner_pid)
    assert not process_running(int(child_pidfile.read_text()))  # the `sleep 300` it started is gone too
    again = step(service, "stuck", "b.bin")
    assert again.timed_out and again.cold and again.runner_pid != first.runner_pid


def test_a_runner_that_leaks_past_its_memory_limit_is_replaced_and_says_why(tmp_path: Path) -> None:
    service = make_service(tmp_path, {"inbox": [{"function": "leaky", "params": {"mb": 24}}]})  # limit 64 MB
    results = [step(service, "inbox", f"{n}.bin") for n in range(4)]
    assert all(r.ok and (r.value or {}).get("error") is None for r in results)
    assert [r.cold for r in results] == [True, False, False, True]
    assert [r.recycled is None for r in results] == [True, True, False, True]
    assert "leaked past its memory limit" in (results[2].recycled or "")
    assert "limit 64 MB" in (results[2].recycled or "")
    kept = [(r.value or {})["result"]["kept_mb"] for r in results]
    assert kept == [24, 48, 72, 24]  # the fourth step ran in a new process
    assert results[0].runner_pid == results[2].runner_pid != results[3].runner_pid
    assert results[2].runner_pid is not None and not process_running(results[2].runner_pid)
    # Peak memory is each step's own, though the process is reused: it follows what it holds.
    assert results[1].peak_memory_kb - results[0].peak_memory_kb > 20 * 1024


def test_the_job_records_why_its_runner_was_replaced(tmp_path: Path) -> None:
    service = make_service(tmp_path, {"inbox": [{"function": "leaky", "params": {"mb": 24}}]})  # limit 64 MB
    jobs = [upload(service, "inbox", f"{n}.bin") for n in range(4)]
    assert [run_step(service, job.id, 0, "w").status for job in jobs] == ["succeeded"] * 4
    attempts = [a for job in jobs for a in (service.db.get_job(job.id) or job).attempts]
    assert [a.cold_start for a in attempts] == [True, False, False, True]
    assert [a.recycled for a in attempts[:2]] == [None, None]
    assert "leaked past its memory limit" in (attempts[2].recycled or "")
    detail = (service.db.get_job(jobs[2].id) or jobs[2]).to_dict()
    assert "leaked past its memory limit" in detail["attempts"][0]["recycled"]


def test_a_step_past_its_memory_limit_fails_as_memory_and_replaces_its_runner(tmp_path: Path) -> None:
    service = make_service(tmp_path, {"inbox": [{"function": "hog"}]})
    first = step(service, "inbox", "a.bin")
    error = (first.value or {}).get("error") or {}
    assert error.get("kind") == "memory" and error.get("type") == "MemoryError"
    assert first.recycled == "ran out of memory (limit 64 MB)"
    assert first.runner_pid is not None and not process_running(first.runner_pid)
    job = upload(service, "inbox", "b.bin")
    assert run_step(service, job.id, 0, "w").status == "failed"
    done = service.db.get_job(job.id)
    assert done is not None and "memory limit of 64 MB" in (done.error or "")
    assert [a.cold_start for a in done.attempts] == [True]


def test_a_forked_process_starts_its_own_runners(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    service = make_service(tmp_path, {"inbox": [{"function": "slow", "params": quick(pidfile)}]})
    parents = step(service, "inbox", "a.bin")
    assert parents.ok and pool().idle() >= 1
    child = os.fork()
    if child == 0:  # like a Celery pool child forked from a worker that has runners
        code = 1
        try:
            theirs = step(service, "inbox", "b.bin")
            code = 0 if theirs.ok and theirs.cold and theirs.runner_pid != parents.runner_pid else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    again = step(service, "inbox", "c.bin")  # and the parent's runner is still its own, and warm
    assert again.ok and again.cold is False and again.runner_pid == parents.runner_pid


def test_a_worker_killed_with_sigkill_leaves_no_runner(tmp_path: Path) -> None:
    pidfile = tmp_path / "runner.pid"
    config = tmp_path / "fileproc.toml"
    make_service(tmp_path, {"inbox": [{"function": "slow", "params": {"seconds": 300, "pidfile": str(pidfile)}}]})
    script = textwrap.dedent(f"""
        from fileproc import dispatch
        from fileproc.config import load_settings
        from fileproc.events import ObjectEvent
        from fileproc.runtime.runner import run_step
        from fileproc.app import build

        service = build(load_settings({str(config)!r}, env={{}}))
        info = service.storage.put("inbox", "a.bin", b"x")
        (item,) = dispatch.submit(service, ObjectEvent("inbox", "a.bin", size=info.size, etag=info.etag), send=False)
        run_step(service, item.job.id, 0, "doomed")
    """)
    worker = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).parents[1],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        runner = int(wait_for(lambda: pidfile.exists() and pidfile.read_text(), 60, "the step to start"))
        assert runner != worker.pid and process_running(runner)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    wait_for(lambda: not process_running(runner), 10, f"runner {runner} to die with its worker")


@pytest.mark.services
def test_a_celery_worker_killed_with_sigkill_leaves_no_runner(tmp_path: Path, redis_url: str) -> None:
    pidfile = tmp_path / "runner.pid"
    queue = "warm-" + os.urandom(4).hex()  # the Redis is shared: a queue no other test uses
    config = write_config(tmp_path / "fileproc.toml", {
        "data_dir": str(tmp_path / "data"),
        "broker": {"url": redis_url},
        "functions": {"paths": [str(FUNCTIONS_DIR)]},
        "pipelines": [{"name": "inbox", "match": {"bucket": "inbox"}, "output": {"bucket": "out"},
                       "steps": [{"function": "slow", "queue": queue,
                                  "params": {"seconds": 300, "pidfile": str(pidfile)}}]}],
    })
    service = build(load_settings(config, env={}))
    service.prepare_buckets()
    worker = Process(config, ["worker", "--concurrency", "1"], tmp_path / "worker.log")
    try:
        info = service.storage.put("inbox", "a.bin", b"x")
        dispatch.submit(service, ObjectEvent("inbox", "a.bin", size=info.size, etag=info.etag))
        runner = int(wait_for(lambda: pidfile.exists() and pidfile.read_text(), 60, "the step to start", worker))
        pool_child = _parent(runner)
        assert _parent(pool_child) == worker.popen.pid  # worker -> Celery pool child -> runner
        worker.popen.send_signal(signal.SIGKILL)  # the worker process only, not its group
        worker.popen.wait()
        wait_for(lambda: not process_running(runner) and not process_running(pool_child), 10,
                 "the pool child and its runner to die with the worker")
    finally:
        worker.kill_group()


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _pid(_: Any) -> int:
    return os.getpid()


def test_a_runner_keeps_no_pipe_or_socket_the_worker_had_open_when_it_started() -> None:
    # Another thread of the worker may be starting a subprocess when a runner is forked: its
    # error pipe must reach EOF when that thread closes it, not when the runner dies.
    import select
    import socket

    read_end, write_end = os.pipe()
    ours, theirs = socket.socketpair()
    runners = pool()
    runners.close()  # only the runner started here
    try:
        result = runners.run("fd-test", None, _pid, None, timeout=30, memory_mb=256)
        assert result.ok and result.value != os.getpid() and runners.idle() == 1  # a live runner
        os.close(write_end)
        assert select.select([read_end], [], [], 5)[0], "the pipe's write end is still open in the runner"
        assert os.read(read_end, 1) == b""
        theirs.close()
        assert select.select([ours], [], [], 5)[0] and ours.recv(1) == b""  # the peer is gone for good
    finally:
        runners.close()
        os.close(read_end)
        ours.close()
