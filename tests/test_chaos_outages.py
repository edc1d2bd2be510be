"""What the broker or the state database loses, or a worker dies holding, is recovered within a lease.

Each test runs the production deployment (tests/chaos.py: versitygw ->
webhook -> `fileproc api` -> Redis -> `fileproc worker`) and breaks one part
on purpose, with `runtime.resend_after` far beyond the test's patience where
it matters, so only the quick recovery can pass it:

- a worker killed holding a message it took from Redis but had not started
  (no attempt yet): the step runs on another worker, once;
- Redis restarted without its data while a step waited in it: the step is
  sent again and runs, once;
- PostgreSQL down for longer than a lease while steps run: nobody could take
  them over, so they go on and their results count; nothing starts over.

The seconds each recovery took are printed (``-s``): the README's failure
table quotes them.
"""

from __future__ import annotations

import os
import signal
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from tests.chaos import (
    TINY_PIPELINE,
    deployment,
    pool_processes,
    postgres_answers,
    redis_answers,
    restartable_postgres,
    restartable_redis,
    runs_of,
    seconds_between,
    sqlite_url,
    stall_pipeline,
    worker_pid,
)
from tests.procs import Process, wait_for
from tests.servers import postgres_server, redis_server

pytestmark = pytest.mark.services

NEVER = {"resend_after": 3600}
"""The outbox's last resort (a step sent but not started for this long is sent again) kept out of the way."""


def ready(worker: Process) -> Process:
    wait_for(lambda: "ready" in worker.log.read_text(errors="replace"), 60, "the worker to be ready", worker)
    return worker


def test_a_message_held_by_a_worker_killed_before_its_step_started_runs_on_another_worker_once(
        tmp_path: Path, redis_url: str) -> None:
    broker = redis.Redis.from_url(redis_url)
    with deployment(tmp_path, redis_url=redis_url, database_url=sqlite_url(tmp_path), pipelines=[TINY_PIPELINE],
                    buckets=["texts", "texts-out"], runtime=NEVER) as d:
        victim = ready(d.worker("victim"))
        # Its step process frozen, the worker still takes a message (and hands it to that process):
        # the moment between a worker's BRPOP and its step's first transaction, made to last.
        (step_process,) = pool_processes(victim.popen.pid)
        os.kill(step_process, signal.SIGSTOP)
        d.upload("texts", "held.txt", b"taken, never started")
        d.wait_for(lambda: broker.hlen("unacked") == 1, 60, "the worker to take the message")
        job = d.job_of("texts", "held.txt")
        assert job is not None and job.status == "queued" and not job.attempts, job

        killed_at = datetime.now(UTC)
        victim.kill_group(signal.SIGKILL)
        rescuer = d.worker("rescuer")
        job = d.wait_for(lambda: d.finished("texts", "held.txt"), 120, "the step to run on the other worker")
        assert job.status == "succeeded", job
        (attempt,) = job.attempts
        assert worker_pid(attempt.worker) == rescuer.popen.pid
        assert [o.key for o in job.outputs] == ["held.txt/size.txt"]
        print(f"\nkill -9 of a worker holding an unstarted step -> the step started elsewhere: "
              f"{seconds_between(killed_at, attempt.started_at):.1f} s (resend_after: {NEVER['resend_after']} s)")


def test_a_step_waiting_in_a_redis_restarted_without_its_data_is_sent_again_and_runs_once(tmp_path: Path) -> None:
    with redis_server() as redis_url:  # this test's own: it restarts it
        server = restartable_redis(redis_url)
        try:
            with deployment(tmp_path, redis_url=redis_url, database_url=sqlite_url(tmp_path),
                            pipelines=[TINY_PIPELINE], buckets=["texts", "texts-out"], runtime=NEVER) as d:
                broker = redis.Redis.from_url(redis_url)
                d.upload("texts", "waiting.txt", b"sent, then lost")  # no worker yet: its message waits
                d.wait_for(lambda: broker.llen("tiny") == 1, 60, "the step's message in its queue")

                server.stop()
                server.start(redis_answers(redis_url))
                restarted_at = datetime.now(UTC)
                d.wait_for(lambda: broker.llen("tiny") == 1, 60, "the step to be sent again")
                sent_again = seconds_between(restarted_at, datetime.now(UTC))

                ready(d.worker("worker"))
                job = d.wait_for(lambda: d.finished("texts", "waiting.txt"), 60, "the step to run")
                assert job.status == "succeeded", job
                assert len(job.attempts) == 1, job.attempts
                assert [o.key for o in job.outputs] == ["waiting.txt/size.txt"]
                print(f"\nRedis restarted empty -> the waiting step back in its queue within {sent_again:.1f} s "
                      f"(resend_after: {NEVER['resend_after']} s)")
        finally:
            server.close()


def test_running_steps_go_on_through_a_database_outage_longer_than_a_lease_and_count_once(
        tmp_path: Path, redis_url: str) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    keys = ["a.bin", "b.bin"]
    with postgres_server() as database_url:  # this test's own: it stops it
        server = restartable_postgres(database_url)
        try:
            # The default lease (10 s): the outage below is longer than it, and than 80 % of it.
            with deployment(tmp_path, redis_url=redis_url, database_url=database_url,
                            pipelines=[stall_pipeline(runs, first=30, then=1)], buckets=["slow", "slow-out"]) as d:
                for name in ("worker-1", "worker-2"):
                    ready(d.worker(name))
                for key in keys:
                    d.upload("slow", key, b"x" * 100)
                d.wait_for(lambda: all(runs_of(runs, k) for k in keys), 60, "both steps to start")

                server.stop(signal.SIGINT)  # a fast shutdown: every connection is closed
                down = time.monotonic()
                time.sleep(15)  # the outage's length, not a wait for a result
                server.start(postgres_answers(database_url))
                outage = time.monotonic() - down
                jobs = [d.wait_for(lambda k=k: d.finished("slow", k), 120, f"{k} to finish") for k in keys]
                for key, job in zip(keys, jobs, strict=True):
                    assert job.status == "succeeded", job
                    assert [a.status for a in job.attempts] == ["succeeded"], job.attempts
                    assert len(runs_of(runs, key)) == 1, f"{key}'s step started over"
                    assert [o.key for o in job.outputs] == [f"{key}/done.txt"]
                    assert d.read("slow-out", f"{key}/done.txt") == b"run 1"
                took = ", ".join(f"{seconds_between(j.attempts[0].started_at, j.finished_at):.1f} s" for j in jobs)
                print(f"\nPostgreSQL down for {outage:.1f} s under two 30 s steps: each ran once, in {took}")
        finally:
            server.close()
