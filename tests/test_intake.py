"""One intake path: every source describes an object the same way, and the receiver records each once.

Real parts: local storage, SQLite or PostgreSQL, the real folder watcher, the
``fileproc put`` command, backfill, and the webhook app under a real uvicorn
on loopback.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from click.testing import CliRunner
from fastapi.testclient import TestClient

from fileproc import dispatch
from fileproc.app import build
from fileproc.cli import cli
from fileproc.config import load_settings
from fileproc.events import ObjectEvent
from fileproc.intake import Source
from fileproc.intake.backfill import backfill
from fileproc.intake.watcher import WatcherSource
from fileproc.intake.webhook import Committer
from fileproc.service import Service
from fileproc.state import Database
from fileproc.tokens import Tokens
from fileproc.web import create_app
from tests.helpers import image_bytes
from tests.procs import wait_for, write_config
from tests.servers import free_port

WEBHOOK = "test-webhook-token"
ADMIN = "test-admin-token"


def config_for(tmp_path: Path, database: str, name: str = "fileproc") -> Path:
    return write_config(tmp_path / f"{name}.toml", {
        "data_dir": str(tmp_path / "data"),
        "database": {"url": database},
        "broker": {"url": "redis://127.0.0.1:9/0"},  # nothing listens: sends stay due (not looked at here)
        "api": {"webhook_token": WEBHOOK, "admin_token": ADMIN},
        "watcher": {"settle_seconds": 0.1},
        # A content type rule: it must decide the same way however the object arrived.
        "pipelines": [{"name": "images", "match": {"bucket": "uploads", "content_type": ["image/*"]},
                       "steps": [{"function": "thumbnail"}],
                       "output": {"bucket": "derived", "key": "{key}/{name}"}}],
    })


def service_with_database(tmp_path: Path, name: str) -> tuple[Service, Path]:
    """A service on the shared data folder (same buckets) with a database of its own."""
    config = config_for(tmp_path, f"sqlite:///{tmp_path / (name + '.db')}", name)
    return build(load_settings(config, env={})), config


def only_event(service: Service) -> dict[str, Any]:
    (job,) = service.db.list_jobs()
    return {k: v for k, v in job.event.items() if k not in ("source", "time")}


def webhook_record(bucket: str, key: str, size: int, etag: str) -> dict[str, Any]:
    # What AWS or versitygw sends: no content type, no metadata.
    return {"eventName": "ObjectCreated:Put", "eventTime": "2026-11-27T10:00:00.000Z",
            "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": size, "eTag": etag}}}


def events_from_every_source(tmp_path: Path, key: str) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}

    watched, _ = service_with_database(tmp_path, "watcher")
    source = WatcherSource(watched.settings.buckets_dir, watched.storage,
                           lambda events: dispatch.submit_many(watched, events, send=False), settle_seconds=0.1)
    assert isinstance(source, Source)
    source.start()  # the file is already there: the catch-up scan reports it
    try:
        wait_for(lambda: watched.db.list_jobs(), 30, "the watcher's job")
    finally:
        source.stop()
    found["watcher"] = only_event(watched)

    backfilled, _ = service_with_database(tmp_path, "backfill")
    assert backfill(backfilled, "uploads").queued == 1
    found["backfill"] = only_event(backfilled)

    hooked, _ = service_with_database(tmp_path, "webhook")
    info = hooked.storage.head("uploads", key)
    with TestClient(create_app(hooked, Tokens(WEBHOOK, ADMIN))) as client:
        answer = client.post(f"/events?token={WEBHOOK}",
                             json={"Records": [webhook_record("uploads", key, info.size, info.etag)]})
        assert len(answer.json()["jobs"]) == 1, answer.text
    found["webhook"] = only_event(hooked)
    return found


def test_an_object_uploaded_with_put_is_the_same_event_from_every_source(tmp_path: Path) -> None:
    photo = tmp_path / "cat.jpg"
    photo.write_bytes(image_bytes(64, 48))
    _, config = service_with_database(tmp_path, "put")
    result = CliRunner().invoke(cli, ["--config", str(config), "put", str(photo), "uploads/pets/cat.jpg"])
    assert result.exit_code == 0, result.output
    put_service, _ = service_with_database(tmp_path, "put")
    events = {"put": only_event(put_service), **events_from_every_source(tmp_path, "pets/cat.jpg")}
    assert events["put"]["content_type"] == "image/jpeg"
    for source, event in events.items():
        assert event == events["put"], source


def test_metadata_and_content_type_are_the_same_from_every_source(tmp_path: Path) -> None:
    service, _ = service_with_database(tmp_path, "store")
    service.storage.ensure_bucket("uploads")
    service.storage.put("uploads", "scans/page.png", image_bytes(32, 32, fmt="PNG"), content_type="image/png",
                        metadata={"origin": "scanner"})
    events = events_from_every_source(tmp_path, "scans/page.png")
    for source, event in events.items():
        assert (event["content_type"], event["metadata"]) == ("image/png", {"origin": "scanner"}), source
        assert event == events["watcher"], source


# -- many concurrent requests, two receivers on one database ---------------------------


class Receiver:
    """The app under a real uvicorn on a free loopback port, in a thread."""

    def __init__(self, service: Service) -> None:
        self.port = free_port()
        config = uvicorn.Config(create_app(service, Tokens(WEBHOOK, ADMIN)), host="127.0.0.1", port=self.port,
                                log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        wait_for(lambda: self.server.started, 30, "uvicorn to start")
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "postgres":
        yield request.getfixturevalue("postgres_url")
    else:
        yield f"sqlite:///{tmp_path / 'shared.db'}"


@pytest.mark.services
def test_hundreds_of_concurrent_posts_to_two_receivers_are_recorded_exactly_once(
        tmp_path: Path, database: str) -> None:
    config = config_for(tmp_path, database)
    prefix = uuid.uuid4().hex  # the PostgreSQL database is shared by the session's tests
    keys = [f"{prefix}/{i}.jpg" for i in range(300)]
    # Each key twice (once to each receiver, concurrently), plus a third copy of some.
    posts = [(i % 2, key) for i, key in enumerate(keys)] + [((i + 1) % 2, key) for i, key in enumerate(keys)]
    posts += [(0, key) for key in keys[:60]]
    services = [build(load_settings(config, env={})) for _ in range(2)]

    async def post_all(ports: list[int]) -> list[tuple[str, httpx.Response]]:
        limit = asyncio.Semaphore(64)
        async with httpx.AsyncClient(timeout=60) as client:
            async def post(receiver: int, key: str) -> tuple[str, httpx.Response]:
                record = {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "uploads"}, "object": {
                    "key": key, "size": 100, "eTag": "e-" + key.replace("/", "-"), "contentType": "image/jpeg"}}}
                async with limit:
                    return key, await client.post(f"http://127.0.0.1:{ports[receiver]}/events?token={WEBHOOK}",
                                                  json={"Records": [record]})

            return await asyncio.gather(*(post(receiver, key) for receiver, key in posts))

    with Receiver(services[0]) as first, Receiver(services[1]) as second:
        answers = asyncio.run(post_all([first.port, second.port]))
    assert [a.status_code for _, a in answers] == [200] * len(posts)
    jobs_of_key: dict[str, set[int]] = {}
    for key, answer in answers:
        jobs_of_key.setdefault(key, set()).update(answer.json()["jobs"])
    assert all(len(ids) == 1 for ids in jobs_of_key.values()), "a key got two jobs"
    recorded = [job for job in services[0].db.list_jobs(limit=10_000) if job.key.startswith(prefix)]
    assert sorted(job.key for job in recorded) == sorted(keys)
    assert {job.id for job in recorded} == set().union(*jobs_of_key.values())


def test_the_webhook_committer_is_a_source(tmp_path: Path) -> None:
    service, _ = service_with_database(tmp_path, "committer")
    assert isinstance(Committer(service), Source)


@pytest.mark.services
def test_an_object_deleted_and_uploaded_again_with_the_same_bytes_gets_a_new_job(tmp_path: Path,
                                                                                 database: str) -> None:
    db = Database(database)
    prefix = uuid.uuid4().hex  # the PostgreSQL database is shared by the session's tests

    def upload(key: str, sequencer: str | None = None) -> tuple[str, ObjectEvent]:
        return "docs", ObjectEvent("docs", f"{prefix}/{key}", etag="same-bytes", size=5, sequencer=sequencer)

    def removal(key: str, sequencer: str | None = None) -> tuple[str, ObjectEvent]:
        return "docs", ObjectEvent("docs", f"{prefix}/{key}", event_name="s3:ObjectRemoved:Delete",
                                   sequencer=sequencer)

    def created(*wanted: tuple[str, ObjectEvent]) -> list[tuple[int, bool]]:
        return [(job.id, new) for job, new in db.create_jobs(wanted, sending=False)]

    def new_job(*wanted: tuple[str, ObjectEvent]) -> int:
        [(job_id, new)] = created(*wanted)
        assert new, wanted
        return job_id

    # S3 notifications, in order: upload, its duplicate, delete, upload of the same bytes, its duplicate.
    first = new_job(upload("a.txt", "0A"))
    assert created(upload("a.txt", "0A")) == [(first, False)]
    new_job(removal("a.txt", "0B"))
    again = new_job(upload("a.txt", "0C"))
    assert again != first
    assert created(upload("a.txt", "0C")) == [(again, False)]
    assert created(upload("a.txt")) == [(again, False)]  # the same upload, listed by the reconciler

    # All in one batch, with no sequencers (the folder watcher's uploads): in the order given.
    batch = created(upload("b.txt"), removal("b.txt", "1"), upload("b.txt"), upload("b.txt"))
    assert [new for _, new in batch] == [True, True, True, False]
    assert batch[0][0] != batch[2][0] == batch[3][0]

    # A removal that S3's sequencer puts before the upload (arrived late) leaves the upload's job alone.
    kept = new_job(upload("c.txt", "0F"))
    new_job(removal("c.txt", "0E"))
    assert created(upload("c.txt", "0F")) == [(kept, False)]
