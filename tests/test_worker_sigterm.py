"""SIGTERM to a worker in the middle of a step: what Kubernetes does to a pod it scales down or moves.

The kubelet sends SIGTERM to the container's main process, waits the pod's
``terminationGracePeriodSeconds``, then kills whatever is left. A worker must
stop cleanly within that: take no new step, finish the one it runs (or, if
the grace period is shorter than the step, be killed and have the step run
again on another worker, once), and lose nothing queued. Each test runs the
production shape (versitygw -> webhook -> ``fileproc api`` -> Redis ->
``fileproc worker``, tests/chaos.py) and reads the state database.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.chaos import deployment, runs_of, sqlite_url, stall_pipeline, worker_pid

pytestmark = pytest.mark.services

GRACE_SECONDS = 60.0
"""The pod's grace period in these tests: far longer than the steps that must finish within it."""


def test_sigterm_mid_step_finishes_the_step_exits_and_leaves_queued_work_to_another_worker(
        tmp_path: Path, redis_url: str) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    with deployment(tmp_path, redis_url=redis_url, database_url=sqlite_url(tmp_path),
                    pipelines=[stall_pipeline(runs, first=4)], buckets=["slow", "slow-out"]) as d:
        leaving = d.worker("worker-leaving")
        d.upload("slow", "running.bin", b"r" * 100)
        d.wait_for(lambda: runs_of(runs, "running.bin"), 60, "the step to start")
        (attempt,) = d.job_of("slow", "running.bin").attempts
        assert worker_pid(attempt.worker) == leaving.popen.pid
        d.upload("slow", "queued.bin", b"q" * 100)  # waits in the queue: the only worker is busy
        d.wait_for(lambda: d.job_of("slow", "queued.bin"), 30, "the second job")

        leaving.popen.send_signal(signal.SIGTERM)  # to the main process only, as the kubelet does
        signalled = time.monotonic()
        staying = d.worker("worker-staying")
        try:
            code = leaving.popen.wait(GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the worker did not exit within the grace period:\n{leaving.tail()}") from None
        print(f"\nSIGTERM to exit: {time.monotonic() - signalled:.1f} s (the step lasts 4 s)")
        assert code == 0, leaving.tail()

        # The step it was running finished there, once, before it exited.
        job = d.finished("slow", "running.bin")
        assert job is not None and job.status == "succeeded", job
        assert [(a.status, worker_pid(a.worker)) for a in job.attempts] == [("succeeded", leaving.popen.pid)]
        assert len(runs_of(runs, "running.bin")) == 1
        assert d.read("slow-out", "running.bin/done.txt") == b"run 1"

        # The queued one was left to the other worker, and ran once.
        job = d.wait_for(lambda: d.finished("slow", "queued.bin"), 60, "the queued step to run on the other worker")
        assert job.status == "succeeded", job
        assert [(a.status, worker_pid(a.worker)) for a in job.attempts] == [("succeeded", staying.popen.pid)]
        assert len(runs_of(runs, "queued.bin")) == 1


def test_a_step_longer_than_the_grace_period_runs_again_on_another_worker_once(
        tmp_path: Path, redis_url: str) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    grace = 3.0  # shorter than the step: the kubelet kills the pod with the step still running
    with deployment(tmp_path, redis_url=redis_url, database_url=sqlite_url(tmp_path),
                    pipelines=[stall_pipeline(runs, first=600)], buckets=["slow", "slow-out"]) as d:
        leaving = d.worker("worker-leaving")
        d.upload("slow", "long.bin", b"l" * 100)
        d.wait_for(lambda: runs_of(runs, "long.bin"), 60, "the step to start")
        staying = d.worker("worker-staying")

        leaving.popen.send_signal(signal.SIGTERM)
        try:
            leaving.popen.wait(grace)
            raise AssertionError("the worker exited with its step unfinished instead of finishing it")
        except subprocess.TimeoutExpired:
            pass  # still finishing its step, as it should
        assert len(runs_of(runs, "long.bin")) == 1, "the step ran again while its first run was still going"
        leaving.kill_group(signal.SIGKILL)  # the grace period is over: everything in the pod is killed

        job = d.wait_for(lambda: d.finished("slow", "long.bin"), 90, "the step to run again and finish")
        assert job.status == "succeeded", job
        assert [(a.status, worker_pid(a.worker)) for a in job.attempts] == [
            ("lost", leaving.popen.pid), ("succeeded", staying.popen.pid)], job.attempts
        assert len(runs_of(runs, "long.bin")) == 2  # the killed run and the one that finished: no third
        assert d.read("slow-out", "long.bin/done.txt") == b"run 2"
