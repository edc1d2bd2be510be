"""End to end on real parts: versitygw -> webhook -> `fileproc api` -> Redis -> `fileproc worker`.

Every test starts its own versitygw (posting notifications to the API), its
own API and worker processes, and reads results back with the minio SDK.
"""

from __future__ import annotations

import io
import json
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from minio import Minio
from PIL import Image

from tests.helpers import image_bytes
from tests.procs import FUNCTIONS_DIR, Process, fileproc, jobs, settled, wait_for, wait_healthy, write_config
from tests.servers import Versitygw, free_port, read_from_s3

pytestmark = pytest.mark.services

WEBHOOK_TOKEN = "hook-" + os.urandom(8).hex()
ADMIN_TOKEN = "admin-" + os.urandom(8).hex()


@dataclass
class Stack:
    tmp: Path
    config: Path
    gw: Versitygw
    api_port: int
    processes: list[Process] = field(default_factory=list)

    @property
    def client(self) -> Minio:
        return Minio(self.gw.endpoint, self.gw.access_key, self.gw.secret_key, secure=False)

    def upload(self, bucket: str, key: str, data: bytes, content_type: str = "image/jpeg") -> None:
        if not self.client.bucket_exists(bucket):
            self.client.make_bucket(bucket)
        self.client.put_object(bucket, key, io.BytesIO(data), len(data), content_type=content_type)

    def read(self, bucket: str, key: str) -> bytes:
        return read_from_s3(self.client, bucket, key)

    def worker(self, name: str = "worker") -> Process:
        process = Process(self.config, ["worker", "--concurrency", "1"], self.tmp / f"{name}.log")
        self.processes.append(process)
        return process

    def jobs(self) -> list[dict[str, Any]]:
        return jobs(self.config)

    def settled(self, count: int, timeout: float = 60) -> list[dict[str, Any]]:
        return wait_for(settled(self.config, count), timeout, f"{count} finished jobs", self.processes[-1])

    def post_events(self, body: dict[str, Any] | bytes, token: str | None = WEBHOOK_TOKEN) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return httpx.post(f"http://127.0.0.1:{self.api_port}/events", content=content, headers=headers, timeout=10)


PIPELINES = [
    {
        "name": "thumbnails",
        "match": {"bucket": "uploads", "suffix": [".jpg", ".jpeg", ".png"], "events": ["s3:ObjectCreated:*"]},
        "steps": [{"function": "thumbnail", "params": {"sizes": [128, 256], "format": "webp"}}],
        "output": {"bucket": "derived", "key": "thumbnails/{key}/{name}"},
    },
    {
        "name": "videos",
        "match": {"bucket": "videos", "suffix": [".mp4"]},
        "steps": [{"function": "transcode", "params": {"preset": "mp4-480p"}}],
        "output": {"bucket": "web", "key": "{key}/{name}"},
    },
    {
        "name": "slow",
        "match": {"bucket": "slow"},
        "steps": [{"function": "slow", "params": {"seconds": 4}, "timeout": 30}],
        "output": {"bucket": "slow-out", "key": "{key}/{name}"},
    },
]


@pytest.fixture
def stack(tmp_path: Path, redis_url: str, versitygw: Callable[..., Versitygw],
          request: pytest.FixtureRequest) -> Iterator[Stack]:
    redis.Redis.from_url(redis_url).flushall()  # no messages left over from another test
    if getattr(request, "param", None) == "postgres":
        database = request.getfixturevalue("postgres_url")
    else:
        database = f"sqlite:///{tmp_path / 'state.db'}"
    api_port, gw_port = free_port(), free_port()
    config = tmp_path / "fileproc.toml"
    settings: dict[str, Any] = {
        "data_dir": str(tmp_path / "data"),
        "storage": {"backend": "s3", "endpoint": f"127.0.0.1:{gw_port}", "access_key": "fileproc-test",
                    "secret_key": "", "secure": False},
        "broker": {"url": redis_url, "visibility_timeout": 3},
        "database": {"url": database},
        "api": {"host": "127.0.0.1", "port": api_port, "webhook_token": WEBHOOK_TOKEN,
                "admin_token": ADMIN_TOKEN},
        "functions": {"paths": [str(FUNCTIONS_DIR)]},
    }
    settings["pipelines"] = [*PIPELINES, {
        "name": "flaky",
        "match": {"bucket": "flaky"},
        "steps": [{"function": "flaky", "retries": 0,
                   "params": {"counter": str(tmp_path / "flaky-count"), "succeed_after": 2}}],
        "output": {"bucket": "flaky-out", "key": "{key}/{name}"},
    }]
    write_config(config, settings)
    api = Process(config, ["api"], tmp_path / "api.log")
    processes = [api]
    try:
        wait_healthy(api_port, api)
        gw = versitygw(webhook_url=f"http://127.0.0.1:{api_port}/events?token={WEBHOOK_TOKEN}&keys=raw", port=gw_port)
        settings["storage"]["secret_key"] = gw.secret_key
        write_config(config, settings)
        yield Stack(tmp_path, config, gw, api_port, processes)
    finally:
        for process in reversed(processes):
            process.stop()


@pytest.fixture
def running(stack: Stack) -> Stack:
    """The stack with one worker running."""
    stack.worker()
    return stack


def test_uploads_to_versitygw_get_thumbnails(running: Stack) -> None:
    running.upload("uploads", "cat.jpg", image_bytes(1600, 1200))
    running.upload("uploads", "notes.txt", b"not matched by any pipeline", "text/plain")
    (job,) = running.settled(1)
    assert job["status"] == "succeeded", job
    keys = sorted(o["key"] for o in job["outputs"])
    assert keys == ["thumbnails/cat.jpg/thumb-128.webp", "thumbnails/cat.jpg/thumb-256.webp"]
    thumb = Image.open(io.BytesIO(running.read("derived", "thumbnails/cat.jpg/thumb-256.webp")))
    assert (thumb.format, thumb.size) == ("WEBP", (256, 192))
    stat = running.client.stat_object("derived", "thumbnails/cat.jpg/thumb-256.webp")
    meta = {k.lower(): v for k, v in stat.metadata.items()}
    assert meta["x-amz-meta-fileproc-pipeline"] == "thumbnails"
    assert meta["x-amz-meta-fileproc-source-key"] == "cat.jpg"
    usage = job["usage"]
    assert usage["bytes_read"] > 0 and usage["bytes_written"] > 0 and usage["peak_memory_kb"] > 0
    records = json.dumps(running.jobs()) + fileproc(running.config, "job", str(job["id"])).stdout
    for text in [records, *(p.log.read_text() for p in running.processes)]:
        for secret in (WEBHOOK_TOKEN, ADMIN_TOKEN, running.gw.secret_key):
            assert secret not in text


def test_duplicate_notification_makes_one_job(running: Stack) -> None:
    running.upload("uploads", "dup.jpg", image_bytes())
    (job,) = running.settled(1)
    etag = running.client.stat_object("uploads", "dup.jpg").etag
    body = {"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "uploads"},
                         "object": {"key": "dup.jpg", "size": 10, "eTag": etag}}}]}
    for _ in range(3):
        response = running.post_events(body)
        assert response.status_code == 200
        assert response.json()["jobs"] == [job["id"]]
    found = running.jobs()
    assert [j["id"] for j in found] == [job["id"]]
    assert len([a for a in fileproc_job(running, job["id"])["attempts"]]) == 1


def fileproc_job(stack: Stack, job_id: int) -> dict[str, Any]:
    return json.loads(fileproc(stack.config, "job", str(job_id), "--json").stdout)


ODD_KEYS = [
    "with space/my photo.jpg",
    "plus+sign/a+b.jpg",
    "unicode/café-naïve-日本.jpg",
    "deep/a/b/c/d/e/f/g/h/pic.jpg",
    "percent/100%-done.jpg",
]


def test_odd_keys_round_trip(running: Stack) -> None:
    for key in ODD_KEYS:
        running.upload("uploads", key, image_bytes(400, 300))
    found = running.settled(len(ODD_KEYS))
    assert sorted(j["key"] for j in found) == sorted(ODD_KEYS)
    assert all(j["status"] == "succeeded" for j in found), found
    for key in ODD_KEYS:
        thumb = Image.open(io.BytesIO(running.read("derived", f"thumbnails/{key}/thumb-128.webp")))
        assert thumb.size == (128, 96)


def test_wrong_or_missing_token_is_refused_and_records_nothing(running: Stack) -> None:
    body = {"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "uploads"},
                         "object": {"key": "sneaky.jpg", "size": 1, "eTag": "abc"}}}]}
    refused = running.post_events(body, token=None)
    assert (refused.status_code, refused.json()) == (401, {"error": "missing or wrong token"})
    assert running.post_events(body, token="wrong").status_code == 401
    assert running.post_events(body, token=ADMIN_TOKEN).status_code == 401  # admin token is not the webhook's
    url = f"http://127.0.0.1:{running.api_port}"
    assert httpx.get(f"{url}/jobs", headers={"Authorization": f"Bearer {WEBHOOK_TOKEN}"}).status_code == 401
    assert httpx.get(f"{url}/jobs").status_code == 401
    assert httpx.get(f"{url}/jobs", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).json() == []
    assert running.jobs() == []
    assert running.post_events({"Event": "s3:TestEvent", "Service": "Amazon S3"}).json() == {"test": True}
    bad = running.post_events(b"{not json")
    assert bad.status_code == 400 and bad.json()["error"].startswith("body is not JSON")
    assert running.jobs() == []


def test_corrupt_jpeg_fails_alone(running: Stack) -> None:
    good = image_bytes()
    running.upload("uploads", "good-1.jpg", good)
    running.upload("uploads", "broken.jpg", good[: len(good) // 3])
    running.upload("uploads", "text.jpg", b"this is not an image at all")
    running.upload("uploads", "good-2.jpg", image_bytes(color="orange"))
    found = {j["key"]: j for j in running.settled(4)}
    assert found["good-1.jpg"]["status"] == found["good-2.jpg"]["status"] == "succeeded"
    for key in ("broken.jpg", "text.jpg"):
        assert found[key]["status"] == "failed"
        assert "image" in found[key]["error"], found[key]["error"]
        assert found[key]["outputs"] == []
    assert len(fileproc_job(running, found["broken.jpg"]["id"])["attempts"]) == 1  # not retried


def test_worker_killed_mid_step_runs_again_and_succeeds_once(stack: Stack) -> None:
    first = stack.worker("worker-1")
    stack.upload("slow", "big.bin", b"x" * 1000, "application/octet-stream")
    wait_for(lambda: any(j["status"] == "running" for j in stack.jobs()), 30, "the step to start", first)
    first.kill_group(signal.SIGKILL)
    stack.worker("worker-2")
    (job,) = stack.settled(1, timeout=90)
    assert job["status"] == "succeeded", job
    detail = fileproc_job(stack, job["id"])
    assert [a["status"] for a in detail["attempts"]] == ["lost", "succeeded"]
    assert [o["key"] for o in detail["outputs"]] == ["big.bin/done.txt"]
    assert stack.read("slow-out", "big.bin/done.txt") == b"processed 1000 bytes"


def test_backfill_finds_objects_uploaded_while_nothing_listened(stack: Stack) -> None:
    stack.processes[0].stop()  # the API: versitygw's notifications now go nowhere
    for name in ("a.jpg", "b.jpg", "sub/c.jpg"):
        stack.upload("uploads", name, image_bytes())
    stack.upload("uploads", "readme.txt", b"no pipeline for this", "text/plain")
    assert stack.jobs() == []
    out = fileproc(stack.config, "backfill", "uploads").stdout
    assert "listed 4, matched 3: 3 queued" in out
    stack.worker()
    found = stack.settled(3)
    assert sorted(j["key"] for j in found) == ["a.jpg", "b.jpg", "sub/c.jpg"]
    assert all(j["status"] == "succeeded" for j in found)
    again = fileproc(stack.config, "backfill", "uploads").stdout
    assert "0 queued" in again and "3 already done" in again


@pytest.mark.parametrize("stack", ["postgres"], indirect=True)
def test_postgresql_as_state_database(stack: Stack) -> None:
    stack.worker()
    stack.upload("uploads", "pg.jpg", image_bytes())
    (job,) = stack.settled(1)
    assert job["status"] == "succeeded"
    assert len(job["outputs"]) == 2


def test_retry_runs_a_failed_job_again(running: Stack) -> None:
    running.upload("flaky", "once.bin", b"data", "application/octet-stream")
    (job,) = running.settled(1)
    assert job["status"] == "failed" and "dependency not ready (attempt 1)" in job["error"]
    out = fileproc(running.config, "retry", "--failed").stdout
    assert out.strip() == f"job {job['id']}: queued"
    (again,) = running.settled(1)
    assert again["status"] == "succeeded" and again["error"] is None
    assert [a["status"] for a in again["attempts"]] == ["retried", "succeeded"]
    assert running.read("flaky-out", "once.bin/ok.txt") == b"ok"


def test_a_video_uploaded_to_versitygw_is_transcoded(running: Stack, tmp_path: Path) -> None:
    from tests.media import duration, ffprobe, make_video, streams

    running.upload("videos", "clips/wide.mp4", make_video(tmp_path / "wide.mp4", size="960x540").read_bytes(),
                   "video/mp4")
    (job,) = running.settled(1, timeout=120)
    assert job["status"] == "succeeded", job
    assert [o["key"] for o in job["outputs"]] == ["clips/wide.mp4/480p.mp4"]
    (tmp_path / "out.mp4").write_bytes(running.read("web", "clips/wide.mp4/480p.mp4"))
    out = ffprobe(tmp_path / "out.mp4")
    (video,) = streams(out, "video")
    assert (video["codec_name"], video["width"], video["height"]) == ("h264", 854, 480)
    assert streams(out, "audio")[0]["codec_name"] == "aac" and abs(duration(out) - 1.0) <= 0.04
    meta = {k.lower(): v for k, v in running.client.stat_object("web", "clips/wide.mp4/480p.mp4").metadata.items()}
    assert meta["x-amz-meta-media-height"] == "480" and meta["x-amz-meta-fileproc-source-key"] == "clips/wide.mp4"
