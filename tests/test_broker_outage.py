"""A broker that is away loses nothing: jobs wait in the state database and are sent later."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import redis

from tests.procs import Process, fileproc, jobs, wait_for, wait_healthy, write_config
from tests.servers import free_port

pytestmark = pytest.mark.services


def test_jobs_recorded_while_the_broker_is_down_are_sent_when_it_is_back(tmp_path: Path, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    port = free_port()
    config = write_config(tmp_path / "fileproc.toml", {
        "data_dir": str(tmp_path / "data"),
        "broker": {"url": redis_url},
        "api": {"port": port},
        "pipelines": [{"name": "thumbs", "match": {"bucket": "uploads"}, "steps": [{"function": "thumbnail"}],
                       "output": {"bucket": "derived"}}],
    })
    source = tmp_path / "a.jpg"
    source.write_bytes(b"\xff\xd8 not really a jpeg, the step never runs here")
    dead = {"FILEPROC_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"}
    started = time.monotonic()
    out = fileproc(config, "put", str(source), "uploads/a.jpg", env=dead)
    assert time.monotonic() - started < 30
    assert "job 1: thumbs" in out.stdout and "stay queued until the broker is back" in out.stderr
    (job,) = jobs(config)
    assert job["status"] == "queued"
    assert client.llen("thumbnail") == 0

    api = Process(config, ["api"], tmp_path / "api.log")  # the broker is reachable again
    try:
        wait_healthy(port, api)
        wait_for(lambda: client.llen("thumbnail") == 1, 20, "the pending job to reach the broker", api)
    finally:
        api.stop()
    message = json.loads(client.lindex("thumbnail", 0))
    assert message["headers"]["task"] == "fileproc.run_step"
    assert json.loads(fileproc(config, "job", "1", "--json").stdout)["status"] == "queued"
