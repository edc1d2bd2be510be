"""Deployed functions misbehaving: each gets its plain-words reason, and nobody else is touched.

A deployed function that crashes, blocks, forks, fills the disk or leaks runs
in a warm runner of its own version; after each misbehaviour a well-behaved
function's next step still runs in its same warm runner. Reserved
concurrency holds across two worker processes sharing the state database.
"""

from __future__ import annotations

import itertools
import multiprocessing
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fileproc.app import build
from fileproc.config import load_settings
from fileproc.runtime.runner import run_step
from fileproc.service import Service
from fileproc.state import Database
from fileproc.state.models import Base
from tests.procs import process_running
from tests.test_lambda import SAMPLES, deploy, make_config, run, service_for, upload


@pytest.fixture
def elsewhere() -> Iterator[Path]:
    """A folder outside /tmp and outside data_dir, that no function may write to."""
    folder = Path(tempfile.mkdtemp(prefix="fileproc-test-", dir="/var/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def two_functions(tmp_path: Path, elsewhere: Path) -> Service:
    code = tmp_path / "misbehave"
    shutil.copytree(SAMPLES / "misbehave", code)
    config = make_config(tmp_path, [{"function": "bad"}], extra=[
        {"name": "good", "match": {"bucket": "good-in"}, "steps": [{"function": "good"}],
         "output": {"bucket": "out", "key": "{key}/{name}"}}])
    deploy(config, code, "bad", "app.handler", "--timeout", "2", "--memory", "128", "--disk", "16",
           "--retries", "0", "--env", f"OUTSIDE={tmp_path}", "--env", f"OUTSIDE2={elsewhere}")
    deploy(config, code, "good", "app.handler", "--retries", "0")
    return service_for(config)


def test_each_misbehaviour_is_recorded_in_plain_words_and_others_keep_running(two_functions: Service,
                                                                            elsewhere: Path) -> None:
    service = two_functions
    first = run(service, upload(service, "first.txt", bucket="good-in"))
    assert first.status == "succeeded" and first.attempts[0].cold_start is True

    def still_fine() -> None:
        done = run(service, upload(service, f"{len(service.db.list_jobs())}.txt", bucket="good-in"))
        assert done.status == "succeeded"
        assert done.attempts[0].cold_start is False  # the good function's runner was never touched

    crashed = run(service, upload(service, "crash.txt"))
    assert crashed.status == "failed" and "the step's process died (killed by SIGSEGV)" in (crashed.error or "")
    assert crashed.attempts[0].recycled == "crashed (killed by SIGSEGV)"
    still_fine()

    blocked = run(service, upload(service, "block.txt"))
    assert blocked.status == "failed" and "timed out after 2 s" in (blocked.error or "")
    assert blocked.attempts[0].status == "timed_out" and blocked.attempts[0].recycled == "timed out"
    still_fine()

    forked = run(service, upload(service, "fork.txt"))
    assert forked.status == "succeeded"
    assert not process_running(forked.attempts[0].result["child"])  # its `sleep 300` did not outlive it
    assert "left 1 process(es) running when it returned; they were killed" in (forked.attempts[0].log or "")
    still_fine()

    filled = run(service, upload(service, "fill.txt"))
    assert filled.status == "failed"
    assert "past its disk limit of 16 MB" in (filled.error or "")  # its /tmp (16 MB) filled, or one file grew past it
    still_fine()

    for name, folder in (("outside", service.settings.data_dir.parent.resolve()), ("outside2", elsewhere)):
        refused = run(service, upload(service, f"{name}.txt"))  # next to data_dir; a host folder elsewhere
        assert refused.status == "failed" and f"refused writing {folder}/written-by-a-function: a function " \
            "writes only to its /tmp and the folders fileproc gives it" in (refused.error or "")
        assert not (folder / "written-by-a-function").exists()
        still_fine()

    leaked = run(service, upload(service, "leak.txt"))
    assert leaked.status == "failed" and "needed more than its memory limit of 128 MB" in (leaked.error or "")
    still_fine()


def _worker(config: str, job_ids: list[int], name: str) -> None:
    """A second worker process: runs the given steps until each is done (throttled ones come back)."""
    service = build(load_settings(config, env={}))
    pending = list(job_ids)
    while pending:
        for job_id in list(pending):
            run_step(service, job_id, 0, name)
            job = service.db.get_job(job_id)
            if job is not None and job.finished:
                pending.remove(job_id)
        with service.db.session() as s:  # throttled steps wait out a short backoff: skip it here
            from sqlalchemy import update

            from fileproc.state.models import JobRow

            s.execute(update(JobRow).where(JobRow.id.in_(pending)).values(send_after=None))


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_reserved_concurrency_holds_across_two_worker_processes(tmp_path: Path, database: str,
                                                                request: pytest.FixtureRequest) -> None:
    code = tmp_path / "misbehave"
    shutil.copytree(SAMPLES / "misbehave", code)
    url = None
    if database == "postgres":  # where two workers really race for a slot
        url = request.getfixturevalue("postgres_url")
        with Database(url).session() as s:  # a clean slate on the shared server
            for table in ("outputs", "attempts", "jobs", "function_slots", "function_aliases", "function_versions",
                          "dead_letters"):
                s.execute(Base.metadata.tables[table].delete())
    config = make_config(tmp_path, [{"function": "slow"}], database=url)
    deploy(config, code, "slow", "app.handler", "--concurrency", "1")
    service = service_for(config)
    jobs = [upload(service, f"slow-{n}.txt").id for n in range(6)]
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_worker, args=(str(config), jobs[n::2], f"worker-{n}")) for n in range(2)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(120)
        assert process.exitcode == 0
    finished = [service.db.get_job(job_id) for job_id in jobs]
    assert all(job is not None and job.status == "succeeded" for job in finished)
    spans = sorted(tuple(job.attempts[-1].result["ran"]) for job in finished if job)
    assert len(spans) == 6
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end, f"two steps of a function with reserved concurrency 1 overlapped: {spans}"
    throttled = [a for job in finished if job for a in job.attempts if a.status == "throttled"]
    assert throttled and all("reserved concurrency in use" in (a.error or "") for a in throttled)
