"""Outputs that follow their source: ``on_delete = "remove-outputs"`` (and ``keep``, the default).

Steps are run by hand (run_step, local storage, SQLite), as a worker runs
them; the last test goes through ``fileproc serve`` with a file dropped and
deleted as a user would.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fileproc import dispatch
from fileproc.config import load_settings
from fileproc.errors import ConfigError
from fileproc.events import ObjectEvent
from fileproc.runtime.runner import run_step
from fileproc.service import Service
from fileproc.state import Job
from tests.helpers import image_bytes, local_service
from tests.procs import Process, fileproc, wait_for, wait_healthy, write_config
from tests.servers import free_port

REMOVED = "s3:ObjectRemoved:Delete"


def service_for(tmp_path: Path, on_delete: str | None) -> Service:
    tmp_path.mkdir(parents=True, exist_ok=True)
    pipeline: dict[str, Any] = {"name": "p", "match": {"bucket": "inbox"}, "steps": [{"function": "per-line"}],
                                "output": {"bucket": "out", "key": "{key}/{name}"}}
    if on_delete:
        pipeline["on_delete"] = on_delete
    return local_service(tmp_path, [pipeline])


def put_and_run(service: Service, key: str, data: bytes) -> Job:
    info = service.storage.put("inbox", key, data)
    (item,) = dispatch.submit(service, ObjectEvent("inbox", key, size=info.size, etag=info.etag), send=False)
    assert run_step(service, item.job.id, 0, "w").status == "succeeded"
    done = service.db.get_job(item.job.id)
    assert done is not None
    return done


def remove(service: Service, key: str) -> list[dispatch.Dispatched]:
    service.storage.delete("inbox", key)
    return dispatch.submit(service, ObjectEvent("inbox", key, event_name=REMOVED, sequencer="0002"), send=False)


def stored(service: Service) -> set[str]:
    return {info.key for info in service.storage.list("out")}


def test_a_deleted_source_takes_its_outputs_with_it_and_the_job_says_what_went(tmp_path: Path) -> None:
    service = service_for(tmp_path, "remove-outputs")
    made = put_and_run(service, "a.txt", b"red green")
    assert stored(service) == {"a.txt/red.txt", "a.txt/green.txt"}

    (removal,) = remove(service, "a.txt")
    assert removal.created
    assert run_step(service, removal.job.id, 0, "w").status == "succeeded"
    assert stored(service) == set()
    done = service.db.get_job(removal.job.id)
    assert done is not None and done.status == "succeeded"
    assert sorted(o.key for o in done.removed) == ["a.txt/green.txt", "a.txt/red.txt"]
    assert sorted(done.attempts[-1].result["removed"]) == ["out/a.txt/green.txt", "out/a.txt/red.txt"]
    earlier = service.db.get_job(made.id)
    assert earlier is not None and {o.removed_by for o in earlier.outputs} == {removal.job.id}
    shown = fileproc(tmp_path / "fileproc.toml", "job", str(removal.job.id)).stdout
    assert "removed out/a.txt/red.txt (made by an earlier job)" in shown

    from fastapi.testclient import TestClient

    from fileproc.tokens import Tokens
    from fileproc.web import create_app
    from tests.test_ui import ADMIN, WEBHOOK, log_in

    with TestClient(create_app(service, Tokens(WEBHOOK, ADMIN)), follow_redirects=False) as client:
        log_in(client)
        page = client.get(f"/ui/jobs/{removal.job.id}").text
        assert "<h3>Removed</h3>" in page and "green.txt" in page  # on the dashboard's job page too
        assert f"by <a href=\"/ui/jobs/{removal.job.id}\">job #{removal.job.id}</a>" in \
            client.get(f"/ui/jobs/{made.id}").text


def test_with_keep_the_outputs_stay_when_the_source_goes(tmp_path: Path) -> None:
    service = service_for(tmp_path, None)  # keep is the default
    put_and_run(service, "a.txt", b"red green")
    assert remove(service, "a.txt") == []  # no pipeline takes the removal: nothing to do
    assert stored(service) == {"a.txt/red.txt", "a.txt/green.txt"}


def test_a_new_version_removes_what_it_no_longer_makes(tmp_path: Path) -> None:
    service = service_for(tmp_path, "remove-outputs")
    put_and_run(service, "a.txt", b"red green blue")
    second = put_and_run(service, "a.txt", b"red")  # a new version: makes red only
    assert stored(service) == {"a.txt/red.txt"}
    assert sorted(o.key for o in second.removed) == ["a.txt/blue.txt", "a.txt/green.txt"]
    assert [o.key for o in second.outputs] == ["a.txt/red.txt"] and second.outputs[0].removed_by is None

    keeping = service_for(tmp_path / "keep", None)
    put_and_run(keeping, "a.txt", b"red green")
    assert put_and_run(keeping, "a.txt", b"red").removed == []
    assert stored(keeping) == {"a.txt/red.txt", "a.txt/green.txt"}


def test_an_output_something_else_wrote_over_is_left_alone(tmp_path: Path) -> None:
    service = service_for(tmp_path, "remove-outputs")
    put_and_run(service, "a.txt", b"red green")
    service.storage.put("out", "a.txt/green.txt", b"a person's own file now")
    (removal,) = remove(service, "a.txt")
    assert run_step(service, removal.job.id, 0, "w").status == "succeeded"
    assert stored(service) == {"a.txt/green.txt"}
    with service.storage.open("out", "a.txt/green.txt") as fh:
        assert fh.read() == b"a person's own file now"
    done = service.db.get_job(removal.job.id)
    assert done is not None and done.attempts[-1].result == {"removed": ["out/a.txt/red.txt"],
                                                              "left": ["out/a.txt/green.txt"]}


def test_remove_outputs_on_a_pipeline_that_takes_removals_itself_is_refused_at_start(tmp_path: Path) -> None:
    config = write_config(tmp_path / "fileproc.toml", {
        "data_dir": str(tmp_path / "data"),
        "pipelines": [{"name": "p", "match": {"bucket": "inbox", "events": ["s3:ObjectRemoved:*"]},
                       "steps": [{"function": "thumbnail"}], "output": {"bucket": "out"},
                       "on_delete": "remove-outputs"}]})
    with pytest.raises(ConfigError, match="on_delete"):
        load_settings(config, env={})


def test_deleting_a_dropped_photo_removes_its_thumbnails_through_serve(tmp_path: Path) -> None:
    data = tmp_path / "data"
    port = free_port()
    config = write_config(tmp_path / "fileproc.toml", {
        "data_dir": str(data), "api": {"port": port}, "watcher": {"settle_seconds": 0.2},
        "pipelines": [{"name": "thumbs", "match": {"bucket": "uploads", "suffix": [".jpg"]},
                       "steps": [{"function": "thumbnail", "params": {"sizes": [64, 32]}}],
                       "output": {"bucket": "derived"}, "on_delete": "remove-outputs"}]})
    photo = data / "buckets" / "uploads" / "cat.jpg"
    derived = data / "buckets" / "derived" / "thumbs" / "cat.jpg"
    server = Process(config, ["serve"], tmp_path / "serve.log")
    try:
        wait_healthy(port, server)
        photo.write_bytes(image_bytes(200, 150))
        wait_for(lambda: derived.is_dir() and len(list(derived.iterdir())) == 2, 60, "two thumbnails", server)
        photo.unlink()
        wait_for(lambda: not derived.exists() or not list(derived.iterdir()), 60, "the thumbnails removed", server)
        found = [json.loads(fileproc(config, "job", str(j["id"]), "--json").stdout)
                 for j in json.loads(fileproc(config, "jobs", "--json").stdout)]
    finally:
        server.stop()
    (removal,) = [j for j in found if j["removed"]]
    assert removal["status"] == "succeeded"
    assert sorted(o["key"] for o in removal["removed"]) == ["thumbs/cat.jpg/thumb-32.webp",
                                                            "thumbs/cat.jpg/thumb-64.webp"]
    (upload,) = [j for j in found if j["outputs"]]
    assert {o["removed_by"] for o in upload["outputs"]} == {removal["id"]}
