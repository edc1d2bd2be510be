"""2,000 uploads from 48 client threads on a busy machine: every one processed, once (slow: minutes).

The deployment under test is the production one with default settings:
versitygw -> webhook (``?token=T&keys=raw``) -> `fileproc api` -> Redis ->
`fileproc worker` (default concurrency), plus `fileproc reconcile` with the
default ``reconcile.min_interval``. Two busy loops at nice 0 load the CPU for
the burst's duration. Nothing is done by hand: the receiver and the
reconciler must, between them, find every upload.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from tests.chaos import TINY_PIPELINE, check_each_once, deployment, sqlite_url, upload_in_threads
from tests.load import cpu_load, cpu_seconds

pytestmark = pytest.mark.services

UPLOADS = 2000
THREADS = 48
SETTLE_SECONDS = 240.0
"""How long after the burst every job must be finished ("within a few minutes")."""


@pytest.mark.timeout(600)
def test_slow_burst_of_2000_uploads_from_48_threads_under_cpu_load_processed_exactly_once(
        tmp_path: Path, redis_url: str) -> None:
    keys = [f"burst/{n // 100:02d}/{n:04d}.txt" for n in range(UPLOADS)]
    # The default database (SQLite); test_e2e_s3 and test_chaos_hosts run PostgreSQL.
    with deployment(tmp_path, redis_url=redis_url, database_url=sqlite_url(tmp_path), pipelines=[TINY_PIPELINE],
                    buckets=["texts", "texts-out"]) as d:
        d.worker()
        d.start("reconcile", ["reconcile"])
        began = time.monotonic()
        with cpu_load(processes=2) as hogs:
            upload_in_threads(d, "texts", keys, THREADS)
            burst = time.monotonic() - began
            assert all(cpu_seconds(pid) > 0 for pid in hogs), "the CPU load did not run"
        print(f"\n{UPLOADS} uploads in {burst:.1f} s ({UPLOADS / burst:.0f}/s) under load")
        d.wait_for(lambda: sum(d.db.count_jobs().values()) >= UPLOADS, SETTLE_SECONDS,
                   f"{UPLOADS} jobs", interval=1)
        d.settled(UPLOADS, SETTLE_SECONDS - (time.monotonic() - began - burst))
        print(f"all {UPLOADS} jobs finished {time.monotonic() - began - burst:.1f} s after the burst")
        counts = d.db.count_jobs()
        assert counts["succeeded"] == UPLOADS, counts
        check_each_once(d, "texts", keys)
        assert sum(1 for _ in d.client.list_objects("texts-out", recursive=True)) == UPLOADS
        found_by = Counter(j.event.get("source") for j in d.jobs())
        print(f"jobs by source: {dict(found_by)} (the reconciler's are notifications lost on the way)")
