"""A job skipped as superseded nudges the reconciler: its bucket is listed soon, not at the interval.

Under load versitygw sometimes names the wrong key in a notification: the
object it named gets a job for someone else's etag (skipped as superseded),
and the object it should have named has no notification at all. Here that
happens on purpose (a garbled notification, and a lost one), with
``reconcile.interval`` and ``min_interval`` at an hour after the reconciler's
first pass, so only the nudge can list the bucket again within the test:
the lost object is found and processed exactly once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fileproc import dispatch
from fileproc.events import ObjectEvent
from fileproc.intake.reconcile import Reconciler, reconcile_all
from fileproc.runtime.runner import run_step
from fileproc.service import Service
from fileproc.state import Job, JobStatus
from fileproc.state.drift import Drift
from fileproc.state.nudges import nudge, take_nudges
from tests.helpers import image_bytes, local_service
from tests.procs import wait_for

HOUR = 3600.0


def make_service(tmp_path: Path) -> Service:
    return local_service(tmp_path, [{"name": "p", "match": {"bucket": "inbox"}, "steps": [{"function": "tiny"}],
                                     "output": {"bucket": "out", "key": "{key}/{name}"}}],
                         reconcile={"interval": HOUR, "min_interval": HOUR})


def jobs_of(service: Service, key: str) -> list[Job]:
    return service.db.list_jobs(key=key)


def run_queued(service: Service) -> None:
    for job in service.db.list_jobs(status=JobStatus.QUEUED):
        run_step(service, job.id, 0, "w")


def test_a_lost_notification_is_found_soon_after_a_job_is_superseded(tmp_path: Path) -> None:
    service = make_service(tmp_path)
    passes: list[Drift] = []
    reconciler = Reconciler(service, on_pass=passes.append).start()
    try:
        wait_for(lambda: passes, 30, "the pass at start")  # the next regular one is an hour away
        a = service.storage.put("inbox", "a.jpg", image_bytes())
        b = service.storage.put("inbox", "b.jpg", image_bytes(color="red"))
        # a.jpg's own notification, and b.jpg's garbled into a.jpg's key (b.jpg's is lost).
        dispatch.submit(service, ObjectEvent("inbox", "a.jpg", size=a.size, etag=a.etag), send=False)
        (garbled,) = dispatch.submit(service, ObjectEvent("inbox", "a.jpg", size=b.size, etag=b.etag), send=False)
        assert not jobs_of(service, "b.jpg")

        assert run_step(service, garbled.job.id, 0, "w").status == "skipped"
        wait_for(lambda: jobs_of(service, "b.jpg"), 60, "the nudged listing to find b.jpg")
        wait_for(lambda: sum(d.submitted for d in list(passes)) == 1, 30, "the nudged pass's report")
    finally:
        reconciler.stop()
    run_queued(service)

    stale = service.db.get_job(garbled.job.id)
    assert stale is not None and stale.error == "superseded: the object changed since this notification"
    (found,) = jobs_of(service, "b.jpg")  # exactly one job, done once
    assert found.status == "succeeded" and found.version == b.etag and len(found.attempts) == 1
    assert [o.key for o in found.outputs] == ["b.jpg/size.txt"]
    (kept,) = [j for j in jobs_of(service, "a.jpg") if j.version == a.etag]  # a.jpg's job, not a second one
    assert kept.status == "succeeded" and len(kept.attempts) == 1
    assert [d.sample for d in passes if d.submitted] == [["b.jpg"]]
    # Listing again finds nothing new: each version was processed exactly once.
    assert sum(d.submitted for d in reconcile_all(service, recent=0)) == 0
    assert len(service.db.list_jobs()) == 3


def test_nudges_list_a_bucket_at_most_once_per_min_interval(tmp_path: Path) -> None:
    service = make_service(tmp_path)
    passes: list[Any] = []
    reconciler = Reconciler(service, on_pass=passes.append)  # run by hand: no thread, no clock
    assert [d.bucket for d in reconciler.run_due()] == ["inbox"]  # the pass at start
    assert reconciler.run_due() == []  # the next regular one is an hour away

    assert nudge(service.db, "inbox", every=0)
    assert [d.bucket for d in reconciler.run_due()] == ["inbox"]  # listed at once
    assert nudge(service.db, "inbox", every=0)
    assert nudge(service.db, "inbox", every=0)  # (the same row again)
    assert reconciler.run_due() == []  # a nudge listed it less than min_interval ago: not again now
    assert take_nudges(service.db) == {}  # the nudge was taken (and waits for its turn), not left behind


def test_a_burst_of_superseded_jobs_writes_one_nudge(tmp_path: Path) -> None:
    service = make_service(tmp_path)
    assert nudge(service.db, "inbox", every=HOUR)
    assert not nudge(service.db, "inbox", every=HOUR)  # this process nudged it lately
    assert set(take_nudges(service.db)) == {"inbox"}
    assert take_nudges(service.db) == {}
