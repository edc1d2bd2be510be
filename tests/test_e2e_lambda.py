"""End to end on real parts: AWS's tutorial handler, deployed unchanged, on versitygw + Redis.

versitygw -> webhook -> `fileproc api` -> Redis -> `fileproc worker` -> the
deployed handler, whose own boto3 client downloads the upload to /tmp,
resizes it with Pillow and uploads ``resized-<key>`` to ``<bucket>-resized``,
reaching versitygw through the AWS variables fileproc sets.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.chaos import ADMIN_TOKEN, deployment, sqlite_url
from tests.helpers import image_bytes
from tests.procs import fileproc, settled, write_config

pytestmark = pytest.mark.services

SAMPLES = Path(__file__).parent / "lambda_functions"
RESIZE = {"name": "resize", "match": {"bucket": "uploads", "suffix": [".jpg"]},
          "steps": [{"function": "CreateThumbnail"}], "output": {"bucket": "uploads-resized", "key": "{key}/{name}"}}


def test_the_aws_tutorial_handler_deployed_unchanged_makes_the_resized_copy(tmp_path: Path, redis_url: str) -> None:
    # versitygw has no STS: the function gets fileproc's own keys, knowingly (its own scoped
    # credentials, on MinIO: test_scoped_credentials.py).
    with deployment(tmp_path, redis_url=redis_url, database_url=sqlite_url(tmp_path), pipelines=[],
                    buckets=["uploads", "uploads-resized"], functions={"credentials": "shared"}) as d:
        config, api_port = d.config, d.api_port
        deployed = fileproc(config, "functions", "deploy", str(SAMPLES / "tutorial_resize.py"),
                            "--name", "CreateThumbnail", "--handler", "tutorial_resize.lambda_handler",
                            "--timeout", "30", "--memory", "512")
        assert "deployed CreateThumbnail version 1 (live)" in deployed.stdout
        write_config(config, {**d.settings, "pipelines": [RESIZE]})  # the pipeline names the deployed function
        d.processes[0].stop()
        d.api("api2")
        d.worker(concurrency=1)

        client = d.client
        photo = image_bytes(640, 480)
        client.put_object("uploads", "pets/my cat.jpg", io.BytesIO(photo), len(photo), content_type="image/jpeg")

        (job,) = d.wait_for(settled(config, 1), 90, "the resize job")
        assert job["status"] == "succeeded", json.dumps(job, indent=1)
        resized = Image.open(io.BytesIO(d.read("uploads-resized", "resized-pets/my cat.jpg")))
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
        done = d.wait_for(lambda: (lambda a: a if a["status"] in ("succeeded", "failed") else None)(
            httpx.get(poll, headers=admin, timeout=10).json()), 60, "the asynchronous invocation")
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
        usage = {group["pipeline"]: group for group in json.loads(fileproc(config, "usage", "--by", "pipeline",
                                                                       "--json").stdout)}
        assert usage["(invoke)"]["requests"] == 3 and usage["resize"]["requests"] == 1
