"""End to end on real parts: AWS's tutorial handler, deployed unchanged, on versitygw + Redis.

versitygw -> webhook -> `fileproc api` -> Redis -> `fileproc worker` -> the
deployed handler, whose own boto3 client downloads the upload to /tmp,
resizes it with Pillow and uploads ``resized-<key>`` to ``<bucket>-resized``,
reaching versitygw through the AWS variables fileproc sets.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from minio import Minio
from PIL import Image

from tests.helpers import image_bytes
from tests.procs import Process, fileproc, settled, wait_for, wait_healthy, write_config
from tests.servers import free_port

pytestmark = pytest.mark.services

SAMPLES = Path(__file__).parent / "lambda_functions"
WEBHOOK_TOKEN = "hook-" + os.urandom(8).hex()
ADMIN_TOKEN = "admin-" + os.urandom(8).hex()


def test_the_aws_tutorial_handler_deployed_unchanged_makes_the_resized_copy(
        tmp_path: Path, redis_url: str, versitygw: Any) -> None:
    redis.Redis.from_url(redis_url).flushall()
    api_port, gw_port = free_port(), free_port()
    config = tmp_path / "fileproc.toml"
    settings: dict[str, Any] = {
        "data_dir": str(tmp_path / "data"),
        "storage": {"backend": "s3", "endpoint": f"127.0.0.1:{gw_port}", "access_key": "fileproc-test",
                    "secret_key": "", "secure": False},
        "broker": {"url": redis_url},
        "database": {"url": f"sqlite:///{tmp_path / 'state.db'}"},
        "api": {"host": "127.0.0.1", "port": api_port, "webhook_token": WEBHOOK_TOKEN, "admin_token": ADMIN_TOKEN},
        "pipelines": [{"name": "resize", "match": {"bucket": "uploads", "suffix": [".jpg"]},
                       "steps": [{"function": "CreateThumbnail"}],
                       "output": {"bucket": "uploads-resized", "key": "{key}/{name}"}}],
    }
    write_config(config, {**settings, "pipelines": []})
    api = Process(config, ["api"], tmp_path / "api.log")
    processes = [api]
    try:
        wait_healthy(api_port, api)
        gw = versitygw(webhook_url=f"http://127.0.0.1:{api_port}/events?token={WEBHOOK_TOKEN}&keys=raw", port=gw_port)
        settings["storage"]["secret_key"] = gw.secret_key
        write_config(config, {**settings, "pipelines": []})
        deployed = fileproc(config, "functions", "deploy", str(SAMPLES / "tutorial_resize.py"),
                            "--name", "CreateThumbnail", "--handler", "tutorial_resize.lambda_handler",
                            "--timeout", "30", "--memory", "512")
        assert "deployed CreateThumbnail version 1 (live)" in deployed.stdout
        write_config(config, settings)  # the pipeline names the deployed function
        api.stop()
        api = Process(config, ["api"], tmp_path / "api2.log")
        processes = [api, Process(config, ["worker", "--concurrency", "1"], tmp_path / "worker.log")]
        wait_healthy(api_port, api)

        client = Minio(gw.endpoint, gw.access_key, gw.secret_key, secure=False)
        for bucket in ("uploads", "uploads-resized"):
            if not client.bucket_exists(bucket):  # the api made the output bucket
                client.make_bucket(bucket)
        photo = image_bytes(640, 480)
        client.put_object("uploads", "pets/my cat.jpg", io.BytesIO(photo), len(photo), content_type="image/jpeg")

        (job,) = wait_for(settled(config, 1), 90, "the resize job", processes[-1])
        assert job["status"] == "succeeded", json.dumps(job, indent=1)
        response = client.get_object("uploads-resized", "resized-pets/my cat.jpg")
        try:
            resized = Image.open(io.BytesIO(response.read()))
        finally:
            response.close()
            response.release_conn()
        assert resized.size == (320, 240)  # the tutorial halves each side
        (attempt,) = job["attempts"]
        assert job["outputs"] == [{"bucket": "uploads-resized", "key": "resized-pets/my cat.jpg",
                                   "size": job["outputs"][0]["size"], "etag": job["outputs"][0]["etag"]}]
        assert attempt["version"] == "1" and attempt["memory_mb"] == 512 and attempt["billed_ms"] >= 1
        assert "REPORT RequestId:" in attempt["log"] and "Memory Size: 512 MB" in attempt["log"]
        # The copy carries the pipeline's provenance: it is never fed back into a pipeline that wrote it.
        assert client.stat_object("uploads-resized", "resized-pets/my cat.jpg").metadata.get(
            "x-amz-meta-fileproc-pipeline") == "resize"

        # Invoked directly over HTTP (the back-end use case): synchronously, then asynchronously.
        png = image_bytes(200, 100, fmt="PNG")
        client.put_object("uploads", "direct.png", io.BytesIO(png), len(png))  # no pipeline takes .png
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        url = f"http://127.0.0.1:{api_port}/functions/CreateThumbnail/invoke"
        sync = httpx.post(url, json={"bucket": "uploads", "key": "direct.png"}, headers=admin, timeout=90)
        assert sync.status_code == 200 and sync.json()["status"] == "succeeded", sync.text
        assert "REPORT RequestId: " in sync.json()["log"] and sync.json()["version"] == "1"
        assert client.stat_object("uploads-resized", "resized-direct.png").size > 0
        event = {"Records": [{"s3": {"bucket": {"name": "uploads"}, "object": {"key": "pets/my+cat.jpg"}}}]}
        queued = httpx.post(url, json={"event": event}, headers={**admin, "X-Amz-Invocation-Type": "Event"},
                            timeout=30)
        assert queued.status_code == 202, queued.text
        poll = f"http://127.0.0.1:{api_port}{queued.json()['poll']}"
        done = wait_for(lambda: (lambda a: a if a["status"] in ("succeeded", "failed") else None)(
            httpx.get(poll, headers=admin, timeout=10).json()), 60, "the asynchronous invocation", processes[-1])
        assert done["status"] == "succeeded" and done["function"] == "CreateThumbnail", done
        missing = httpx.post(url.replace("CreateThumbnail", "Nope"), json={"bucket": "uploads", "key": "direct.png"},
                             headers=admin, timeout=10)
        assert missing.status_code == 404
        assert httpx.post(url, json={"bucket": "uploads", "key": "direct.png"}, timeout=10).status_code == 401
        own = {"Authorization": "Bearer " + fileproc(config, "functions", "token", "CreateThumbnail").stdout.strip()}
        mine = httpx.post(url, json={"bucket": "uploads", "key": "direct.png"}, headers=own, timeout=90)
        assert mine.status_code == 200 and mine.json()["status"] == "succeeded", mine.text  # its own token will do
        assert httpx.get(poll, headers=own, timeout=10).status_code == 200
        assert httpx.post(url.replace("CreateThumbnail", "Other"), json={"bucket": "uploads", "key": "direct.png"},
                          headers=own, timeout=10).status_code == 401  # ...for it alone
        usage = {json.loads(line)["pipeline"]: json.loads(line)
                 for line in fileproc(config, "usage", "--by", "pipeline", "--json").stdout.splitlines()}
        assert usage["(invoke)"]["requests"] == 3 and usage["resize"]["requests"] == 1
    finally:
        for process in reversed(processes):
            process.stop()
