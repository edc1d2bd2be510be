"""A step asks the store about its object once: the conditional read its handler reads from.

Before a step runs, its object is checked (still there, still the notified
version, not the pipeline's own output). That check is the runner's one GET
with ``If-Match``, not a HEAD before it: counted here in a real versitygw's
access log. What the check decides is the same on S3 and on folders, for a
handler that reads its input and for one that never does, and for a
deployed function (checked by a HEAD: its runner reads through boto3).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from fileproc import dispatch
from fileproc.events import ObjectEvent
from fileproc.runtime.runner import run_step
from fileproc.service import Service
from fileproc.state import Job
from fileproc.state.nudges import ListingNudgeRow
from tests.helpers import image_bytes, local_service
from tests.servers import Versitygw, _serve, versitygw_binary
from tests.test_lambda import SAMPLES, deploy, make_config, service_for


@contextlib.contextmanager
def logged_versitygw(access: Path) -> Iterator[Versitygw]:
    """A throwaway versitygw that logs every request it serves to ``access`` (complete once it stops)."""
    binary = versitygw_binary()
    secret = "fileproc-test-secret-" + os.urandom(6).hex()
    with tempfile.TemporaryDirectory(prefix="fileproc-vgw-log-") as tmp:
        data = Path(tmp) / "data"
        data.mkdir()

        def command(port: int) -> list[str]:
            return [binary, "--access", "fileproc-test", "--secret", secret, "--port", f"127.0.0.1:{port}",
                    "--quiet", "--access-log", str(access), "posix", str(data)]

        with _serve("versitygw", command, Path(tmp) / "versitygw.log") as port:
            yield Versitygw(f"127.0.0.1:{port}", "fileproc-test", secret, data)


def requests_for(access: Path, key: str) -> list[str]:
    """The S3 actions the store served on objects named ``key``, in order (``s3_GetObject`` ...)."""
    found = []
    for line in access.read_text().splitlines():
        # requester bucket [date zone] ip requester request-id ACTION KEY URI STATUS ...
        fields = line.split(" ")
        if len(fields) > 8 and fields[7].startswith("s3_") and fields[8] == key:
            found.append(fields[7])
    return found


def pipelines(function: str) -> list[dict[str, Any]]:
    return [{"name": "p", "match": {"bucket": "inbox"}, "steps": [{"function": function}],
             "output": {"bucket": "out", "key": "{key}/{name}"}},
            {"name": "self", "match": {"bucket": "mixed", "suffix": ".jpg"},
             "steps": [{"function": "thumbnail", "params": {"format": "jpeg"}}],
             "output": {"bucket": "{bucket}", "key": "thumbs/{key}/{name}"}}]


def s3_service(folder: Path, gw: Versitygw, function: str) -> Service:
    service = local_service(folder, pipelines(function), storage={
        "backend": "s3", "endpoint": gw.endpoint, "access_key": gw.access_key, "secret_key": gw.secret_key,
        "secure": False})
    for bucket in ("inbox", "mixed"):
        service.storage.ensure_bucket(bucket)
    return service


def upload(service: Service, key: str, data: bytes, bucket: str = "inbox") -> Job:
    info = service.storage.put(bucket, key, data)
    (item,) = dispatch.submit(service, ObjectEvent(bucket, key, size=info.size, etag=info.etag), send=False)
    return item.job


def job(service: Service, job_id: int) -> Job:
    found = service.db.get_job(job_id)
    assert found is not None
    return found


def nudged(service: Service) -> set[str]:
    with service.db.reading() as s:
        return set(s.scalars(select(ListingNudgeRow.bucket)))


@pytest.mark.parametrize("function", ["thumbnail", "tiny"])  # tiny never reads its input
def test_a_step_asks_the_store_about_its_object_once(tmp_path: Path, function: str) -> None:
    access = tmp_path / "access.log"
    with logged_versitygw(access) as gw:
        service = s3_service(tmp_path, gw, function)
        first = upload(service, "a.jpg", image_bytes())
        assert run_step(service, first.id, 0, "w").status == "succeeded"
        done = job(service, first.id)
        assert done.outputs
        assert done.attempts[0].bytes_read == (first.object_event.size if function == "thumbnail" else 0)
    # The upload, then the step's one conditional read (before: a HEAD by the worker, then the runner's GET).
    assert requests_for(access, "a.jpg") == ["s3_PutObject", "s3_GetObject"]


@pytest.mark.parametrize("function", ["thumbnail", "tiny"])
def test_superseded_deleted_and_own_objects_are_skipped_on_s3(tmp_path: Path, function: str) -> None:
    access = tmp_path / "access.log"
    with logged_versitygw(access) as gw:
        own = superseded_deleted_and_own(s3_service(tmp_path, gw, function))
    assert requests_for(access, own) == ["s3_PutObject", "s3_GetObject"]  # the check: no HEAD


@pytest.mark.parametrize("function", ["thumbnail", "tiny"])
def test_superseded_deleted_and_own_objects_are_skipped_in_folders(tmp_path: Path, function: str) -> None:
    service = local_service(tmp_path, pipelines(function))
    superseded_deleted_and_own(service)


def superseded_deleted_and_own(service: Service) -> str:
    """The three reasons a step does not run, on ``service``; the key of the pipeline's own output."""
    old = upload(service, "a.jpg", image_bytes())
    current = service.storage.put("inbox", "a.jpg", image_bytes(color="red"))  # its notification is lost
    assert run_step(service, old.id, 0, "w").status == "skipped"
    assert job(service, old.id).error == "superseded: the object changed since this notification"
    (newer,) = [j for j in service.db.list_jobs() if j.id != old.id]  # the current version got its job
    assert newer.version == current.etag and newer.status == "queued"
    assert "inbox" in nudged(service)  # and its bucket is listed soon (tests/test_nudge.py)
    assert run_step(service, newer.id, 0, "w").status == "succeeded"
    assert job(service, newer.id).outputs

    gone = upload(service, "b.jpg", image_bytes())
    service.storage.delete("inbox", "b.jpg")
    assert run_step(service, gone.id, 0, "w").status == "skipped"
    assert job(service, gone.id).error == "the object no longer exists"

    # An object the pipeline wrote itself, whose notification carried no metadata (as S3's do not).
    own = service.storage.put("mixed", "thumbs/c.jpg/thumb-256.jpg", image_bytes(),
                              metadata={"fileproc-pipeline": "self"})
    (item,) = dispatch.submit(service, ObjectEvent("mixed", own.key, size=own.size, etag=own.etag), send=False)
    assert run_step(service, item.job.id, 0, "w").status == "skipped"
    assert job(service, item.job.id).error == "the object was written by pipeline 'self' itself"
    return own.key


def test_a_deployed_function_is_checked_by_a_head_and_skipped_alike(tmp_path: Path) -> None:
    # Its runner reads the object through its own client (boto3), so the worker checks it with a HEAD.
    code = tmp_path / "probe"
    shutil.copytree(SAMPLES / "probe", code)
    config = make_config(tmp_path, [{"function": "peek"}])
    deploy(config, code, "peek", "app.handler", "--retries", "0")
    service = service_for(config)
    old = upload(service, "a.txt", b"first")
    current = service.storage.put("inbox", "a.txt", b"second")
    assert run_step(service, old.id, 0, "w").status == "skipped"
    assert job(service, old.id).error == "superseded: the object changed since this notification"
    (newer,) = [j for j in service.db.list_jobs() if j.id != old.id]
    assert newer.version == current.etag and "inbox" in nudged(service)
    assert run_step(service, newer.id, 0, "w").status == "succeeded"
    gone = upload(service, "b.txt", b"third")
    service.storage.delete("inbox", "b.txt")
    assert run_step(service, gone.id, 0, "w").status == "skipped"
    assert job(service, gone.id).error == "the object no longer exists"
