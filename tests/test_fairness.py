"""Fairness between deployed functions: a burst of one never queues another behind it.

Each deployed function has a queue of its own (``fn.NAME``) and a worker of
concurrency 2 takes them in turn, holding no more messages than it runs: a
real ``fileproc worker`` on a real Redis and a real RabbitMQ, SQLite and
local storage. Also: the queue of a function deployed after the worker
started is consumed, and a message an older fileproc left in the shared
queue ``user-functions`` still runs.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fileproc.app import build
from fileproc.config import load_settings
from fileproc.events import ObjectEvent
from fileproc.metrics import queue_depths
from fileproc.runtime.app import send_step
from fileproc.serverless import invocations
from fileproc.serverless.catalog import USER_QUEUE
from fileproc.service import Service
from fileproc.state import Job
from tests.procs import Process, fileproc, wait_for, write_config
from tests.rabbitmq_server import rabbitmq_server
from tests.servers import redis_server

pytestmark = pytest.mark.services

SLOW = "import time\n\ndef handler(event, context):\n    time.sleep(1)\n    return {'slept': 1}\n"
QUICK = "def handler(event, context):\n    return {'ok': True}\n"
BURST = 16


@dataclass
class Worker:
    """A ``fileproc worker --concurrency 2`` with functions A (sleeps 1 s) and B (returns) deployed before it."""

    root: Path
    config: Path
    service: Service
    process: Process

    def deploy(self, name: str, code: str) -> None:
        (self.root / f"{name.lower()}.py").write_text(code)
        fileproc(self.config, "functions", "deploy", str(self.root / f"{name.lower()}.py"), "--name", name,
                 "--handler", f"{name.lower()}.handler")

    def invoke(self, function: str) -> Job:
        return invocations.submit(self.service, function, "inbox", "object.txt", mode="async")

    def ended(self, job: Job, timeout: float = 60) -> Job:
        found = wait_for(lambda: (lambda j: j if j is not None and j.finished else None)(
            self.service.db.get_job(job.id)), timeout, f"job {job.id} to end", self.process)
        assert found.status == "succeeded", (found.error, [a.error for a in found.attempts])
        return found


@pytest.fixture(scope="module", params=["redis", "rabbitmq"])
def worker(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    root = tmp_path_factory.mktemp(f"fairness-{request.param}")
    with contextlib.ExitStack() as stack:
        if request.param == "redis":
            url = stack.enter_context(redis_server())
        else:
            url = stack.enter_context(rabbitmq_server()).url
        config = write_config(root / "fileproc.toml", {
            "data_dir": str(root / "data"), "broker": {"url": url},
            # No re-send while a test runs: a step runs from the message it was sent.
            "runtime": {"resend_after": 600}, "worker": {"queue_refresh": 0.5}})
        service = build(load_settings(config, env={}))
        service.storage.ensure_bucket("inbox")
        service.storage.put("inbox", "object.txt", b"x")
        for name, code in (("A", SLOW), ("B", QUICK)):
            (root / f"{name.lower()}.py").write_text(code)
            fileproc(config, "functions", "deploy", str(root / f"{name.lower()}.py"), "--name", name,
                     "--handler", f"{name.lower()}.handler")
        found = Worker(root, config, service, Process(config, ["worker", "--concurrency", "2"], root / "worker.log"))
        stack.callback(found.process.stop)
        wait_for(lambda: "ready." in found.process.tail(), 60, "the worker to be ready", found.process)
        found.ended(found.invoke("B"))  # B's runner started: B's steps below take milliseconds
        yield found


def test_one_invocation_of_b_ends_while_most_of_a_burst_of_a_is_still_queued(worker: Worker) -> None:
    burst = [worker.invoke("A") for _ in range(BURST)]
    depths = {queue: depth for queue, (depth, _) in queue_depths(worker.service).items()}
    # What /metrics and the dashboard show: each function's queue, and all of them under user-functions.
    assert depths["fn.A"] >= BURST - 2 and depths["fn.B"] == 0 and depths[USER_QUEUE] == depths["fn.A"]
    b = worker.invoke("B")
    worker.ended(b)
    still_queued = [job.id for job in burst if worker.service.db.get_job(job.id).status == "queued"]  # type: ignore[union-attr]
    # On one shared queue B would have waited for all of them (16 s on two slots); in turn, for one.
    assert len(still_queued) >= BURST // 2, f"only {len(still_queued)} of A's {BURST} steps were still queued"
    for job in burst:  # and the burst itself runs whole, each step once
        assert len(worker.ended(job, timeout=120).attempts) == 1


def test_a_function_deployed_after_the_worker_started_is_run(worker: Worker) -> None:
    name = f"C{uuid.uuid4().hex[:6]}"
    worker.deploy(name, QUICK)
    ended = worker.ended(worker.invoke(name), timeout=30)
    assert ended.attempts[0].result == {"ok": True}


def test_a_message_left_in_the_shared_queue_by_an_older_fileproc_still_runs(worker: Worker) -> None:
    # An invocation of B as an older fileproc queued it: its job marked sent, its message in user-functions.
    info = worker.service.storage.head("inbox", "object.txt")
    event = ObjectEvent("inbox", "object.txt", size=info.size, etag=info.etag)
    name = f"{invocations.PREFIX}async.B.{uuid.uuid4().hex[:16]}"
    ((job, _),) = worker.service.db.create_jobs([(name, event)], sending=True)
    send_step(job.id, 0, USER_QUEUE)
    ended = worker.ended(job, timeout=30)
    assert [attempt.result for attempt in ended.attempts] == [{"ok": True}]
