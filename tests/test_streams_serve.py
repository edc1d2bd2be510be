"""Streams on the embedded default: `fileproc serve` consumes an ``embedded:NAME`` stream with no server to install.

As the README's Streams section does it: a deployed Kinesis handler, records
put with ``fileproc streams put`` and ``POST /streams/NAME/records``, what the
handler printed in ``fileproc logs``, and where the mapping stands in
``fileproc streams status`` and ``/metrics``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.procs import Process, fileproc, wait_for, wait_healthy, write_config
from tests.servers import free_port

ADMIN, WEBHOOK = "streams-admin-token", "streams-webhook-token"

HANDLER = '''
import base64, json

def handler(event, context):
    pages = [json.loads(base64.b64decode(r["kinesis"]["data"]))["page"] for r in event["Records"]]
    print("clicks on", ",".join(pages))
    return {"clicks": len(pages)}
'''


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int, Process]]:
    root = tmp_path_factory.mktemp("streams-serve")
    port = free_port()
    config = write_config(root / "fileproc.toml", {
        "data_dir": str(root / "data"), "pipelines": [],
        "api": {"port": port, "admin_token": ADMIN, "webhook_token": WEBHOOK},
        "streams": [{"name": "clicks", "source": "embedded:clicks", "function": "count-clicks"}]})
    code = root / "count-clicks"
    code.mkdir()
    (code / "app.py").write_text(HANDLER)
    fileproc(config, "functions", "deploy", str(code), "--name", "count-clicks", "--handler", "app.handler")
    server = Process(config, ["serve"], root / "serve.log")
    try:
        wait_healthy(port, server)
        yield config, port, server
    finally:
        assert server.stop() == 0, server.tail()


def logged(config: Path) -> str:
    return fileproc(config, "logs", "count-clicks", check=False).stdout


def test_a_record_put_from_the_cli_reaches_the_handler_and_its_output_is_in_the_logs(
        served: tuple[Path, int, Process]) -> None:
    config, _, server = served
    out = fileproc(config, "streams", "put", "clicks", '{"page": "/"}').stdout
    assert "put on clicks: partition 0, position" in out
    wait_for(lambda: "clicks on /" in logged(config), timeout=30, log=server)
    assert "REPORT RequestId:" in logged(config)
    status = json.loads(fileproc(config, "streams", "status", "--json").stdout)
    (partition,) = status[0]["partitions"]
    wait_for(lambda: json.loads(fileproc(config, "streams", "status", "--json").stdout)[0]["partitions"][0]
             ["lag_records"] == 0, timeout=10)
    assert partition["newest"] is not None


def test_records_put_over_http_are_answered_as_kinesis_does_and_processed(
        served: tuple[Path, int, Process]) -> None:
    config, port, server = served
    base = f"http://127.0.0.1:{port}"
    body = {"Records": [{"Data": base64.b64encode(json.dumps({"page": f"/p{i}"}).encode()).decode(),
                         "PartitionKey": "visitor-1"} for i in range(5)]}
    assert httpx.post(f"{base}/streams/clicks/records", json=body).status_code == 401
    answer = httpx.post(f"{base}/streams/clicks/records", json=body, headers={"Authorization": f"Bearer {WEBHOOK}"})
    assert answer.status_code == 200, answer.text
    found = answer.json()
    assert found["FailedRecordCount"] == 0 and len(found["Records"]) == 5
    assert found["Records"][0]["ShardId"] == "shardId-000000000000"
    wait_for(lambda: "/p4" in logged(config), timeout=30, log=server)
    pages = [page for line in logged(config).splitlines() if line.startswith("clicks on /p")
             for page in line.removeprefix("clicks on ").split(",")]
    assert pages == ["/p0", "/p1", "/p2", "/p3", "/p4"]  # in order, each once
    bad = httpx.post(f"{base}/streams/clicks/records", json={"Records": [{"Data": "%%%"}]},
                     headers={"Authorization": f"Bearer {WEBHOOK}"})
    assert bad.status_code == 400 and "not base64" in bad.text
    unknown = httpx.post(f"{base}/streams/nope/records", json=body, headers={"Authorization": f"Bearer {ADMIN}"})
    assert unknown.status_code == 404
    metrics = httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {ADMIN}"}).text
    wait_for(lambda: 'fileproc_stream_records_total{partition="0",stream="clicks"}'
             in httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {ADMIN}"}).text, timeout=10)
    assert "fileproc_stream_lag_records" in metrics


def test_the_dashboards_streams_page_shows_each_partition_and_what_was_given_up(
        served: tuple[Path, int, Process]) -> None:
    config, port, server = served
    fileproc(config, "streams", "put", "clicks", '{"page": "/dash"}')
    wait_for(lambda: "/dash" in logged(config), timeout=30, log=server)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
        assert client.post("/ui/login", data={"token": ADMIN, "next": "/ui/streams"}).status_code == 303
        page = client.get("/ui/streams")
    assert page.status_code == 200
    assert 'id="stream-clicks"' in page.text and "count-clicks" in page.text
    assert '<tr class="partition"><td><code>0</code>' in page.text
    assert 'href="/ui/streams" aria-current="page"' in page.text
