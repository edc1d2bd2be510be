"""Workers on separate simulated hosts (network namespaces), cut off or killed mid-step.

Each test makes two hosts (tests/netns.py; needs root, as CI runs), starts
Redis, PostgreSQL and versitygw listening on the hosts' service address, the
API here and one `fileproc worker` on each host, then breaks one host:

- cut off for longer than a lease while it runs a step, then reconnected:
  the other host runs the step, it counts once, its outputs are recorded
  once, and the cut-off attempt is refused and recorded as such;
- a network blip on one host, then the other host killed mid-step: the
  step runs again on the first host within 15 s (no broker lock left over
  from the blip stalls redelivery).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.chaos import (
    TINY_PIPELINE,
    Deployment,
    deployment,
    runs_of,
    seconds_between,
    stall_pipeline,
    worker_pid,
)
from tests.netns import Host, lab
from tests.procs import Process, process_running, wait_for
from tests.servers import postgres_server, redis_server

pytestmark = pytest.mark.services

LEASE_SECONDS = 5.0
"""A short lease keeps the cut-off test fast (the default is 10 s)."""


@contextmanager
def two_hosts(tmp: Path, pipelines: list[dict[str, Any]], **sections: dict[str, Any]
              ) -> Iterator[tuple[Deployment, dict[Host, Process]]]:
    """The deployment, with one worker on each of two simulated hosts (both ready)."""
    with lab(hosts=2) as net, redis_server(also_listen=[net.service_address]) as redis_url, \
            postgres_server(also_listen=[net.service_address]) as database_url:
        here = "127.0.0.1"
        with deployment(tmp, redis_url=redis_url.replace(here, net.service_address),
                        database_url=database_url.replace(here, net.service_address), pipelines=pipelines,
                        address=net.service_address, also_listen=[net.service_address],
                        buckets=["slow", "slow-out", "texts", "texts-out"], **sections) as d:
            workers = {host: d.worker(f"worker-{host.name}", host) for host in net.hosts}
            for host, worker in workers.items():
                wait_for(lambda w=worker: "ready" in w.log.read_text(errors="replace"), 60,
                           f"the worker on {host.name} to be ready", worker)
            yield d, workers


def holder(d: Deployment, workers: dict[Host, Process], key: str) -> tuple[Host, Host]:
    """(the host whose worker runs the step of ``key`` now, the other host)."""
    job = d.job_of("slow", key)
    assert job is not None and job.attempts, job
    pid = worker_pid(job.attempts[-1].worker)
    (owner,) = [h for h, w in workers.items() if w.popen.pid == pid]
    (other,) = [h for h in workers if h is not owner]
    return owner, other


def test_host_cut_off_longer_than_a_lease_mid_step_counts_once_and_its_late_result_is_refused(
        tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    with two_hosts(tmp_path, [stall_pipeline(runs, first=60, then=1), TINY_PIPELINE],
                   runtime={"lease_seconds": LEASE_SECONDS}, database={"timeout": 3}) as (d, workers):
        d.upload("slow", "cut.bin", b"y" * 500)
        (first_run,) = d.wait_for(lambda: runs_of(runs, "cut.bin"), 60, "the step to start")
        cut_off, rescuer = holder(d, workers, "cut.bin")

        cut_off.cut()
        cut_at = datetime.now(UTC)
        try:
            # No renewal gets through: the cut-off worker must stop its step by itself, before
            # the lease runs out by the database's clock and the other host may take it.
            d.wait_for(lambda: not process_running(first_run), 3 * LEASE_SECONDS,
                       "the cut-off host to stop its step by itself", interval=0.01)
            stopped_at = datetime.now(UTC)
            job = d.wait_for(lambda: d.finished("slow", "cut.bin"), 60, "the other host to run the step")
            # Keep the host away for two leases in all, so its lease surely ran out unheard.
            wait_for(lambda: seconds_between(cut_at, datetime.now(UTC)) > 2 * LEASE_SECONDS, 30, "two leases")
        finally:
            cut_off.restore()
        (won,) = [a for a in job.attempts if a.status == "succeeded"]
        print(f"\ncut off at {cut_at:%H:%M:%S}; the cut-off host stopped its step "
              f"{seconds_between(cut_at, stopped_at):.2f} s after the cut, the other host started it "
              f"{seconds_between(cut_at, won.started_at):.2f} s and finished it "
              f"{seconds_between(cut_at, job.finished_at):.2f} s after")
        assert stopped_at < won.started_at, "the step ran on both hosts at once"
        assert job.status == "succeeded", job

        # The cut-off worker is back: it must be working again (its late write went through or gave up),
        # so run a second object on it alone, then look at the first job's final record.
        workers[rescuer].kill_group(signal.SIGKILL)
        d.upload("texts", "after.txt", b"z")
        again = d.wait_for(lambda: d.finished("texts", "after.txt"), 60, "the reconnected host to work again")
        assert again.status == "succeeded", again
        assert worker_pid(again.attempts[-1].worker) == workers[cut_off].popen.pid

        job = d.job_of("slow", "cut.bin")
        assert job is not None and job.status == "succeeded", job
        statuses = [a.status for a in job.attempts]
        assert statuses.count("succeeded") == 1, job.attempts
        late = [a for a in job.attempts if worker_pid(a.worker) == workers[cut_off].popen.pid]
        assert len(late) == 1 and late[0].status in ("lost", "late"), job.attempts
        assert "lease" in (late[0].error or "") or "lost" in (late[0].error or ""), late[0]
        print(f"the cut-off attempt: {late[0].status}: {late[0].error}")
        assert worker_pid(won.worker) == workers[rescuer].popen.pid
        assert [(o.bucket, o.key) for o in job.outputs] == [("slow-out", "cut.bin/done.txt")]
        assert d.read("slow-out", "cut.bin/done.txt") == b"run 2"
        assert len(runs_of(runs, "cut.bin")) == 2


def test_host_killed_right_after_another_hosts_network_blip_is_recovered_within_15_s(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    # The default lease: recovery within 15 s must hold with the defaults.
    with two_hosts(tmp_path, [stall_pipeline(runs, first=600, then=1)]) as (d, workers):
        d.upload("slow", "blip.bin", b"w" * 500)
        d.wait_for(lambda: runs_of(runs, "blip.bin"), 60, "the step to start")
        victim, blipped = holder(d, workers, "blip.bin")

        blipped.cut()
        time.sleep(3)  # the blip's length, not a wait for a result
        blipped.restore()
        killed_at = datetime.now(UTC)
        workers[victim].kill_group(signal.SIGKILL)

        job = d.wait_for(lambda: d.finished("slow", "blip.bin"), 90, "the step to run again on the other host")
        assert job.status == "succeeded", job
        assert [a.status for a in job.attempts] == ["lost", "succeeded"], job.attempts
        again = job.attempts[1]
        assert worker_pid(again.worker) == workers[blipped].popen.pid
        recovered_in = seconds_between(killed_at, again.started_at)
        print(f"\nkill -9 to the second attempt's start (PostgreSQL's clock): {recovered_in:.1f} s")
        assert recovered_in < 15, f"the step ran again {recovered_in:.1f} s after the kill"
        assert [o.key for o in job.outputs] == ["blip.bin/done.txt"]
