"""A deployed function's retries, maximum event age, dead letters and destination webhooks.

The destinations are a real HTTP server on loopback; the records it gets
must have Lambda's destination record shape.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from fileproc.runtime.runner import run_step
from fileproc.state.models import JobRow
from tests.procs import wait_for
from tests.test_lambda import SAMPLES, deploy, fileproc, make_config, run, service_for, upload


@pytest.fixture
def destination() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A webhook that keeps what is POSTed to it: (its URL, the records received)."""
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append({"path": self.path,
                             "body": json.loads(self.rfile.read(int(self.headers["Content-Length"])))})
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()


def test_retries_dead_letters_replay_and_destinations(tmp_path: Path,
                                                      destination: tuple[str, list[dict[str, Any]]]) -> None:
    url, received = destination
    code = tmp_path / "probe"
    shutil.copytree(SAMPLES / "probe", code)
    config = make_config(tmp_path, [{"function": "peek"}])
    deploy(config, code, "peek", "app.handler", "--env", "MODE=fail", "--retries", "1", "--backoff", "5",
           "--on-failure", f"{url}/failed", "--on-success", f"{url}/ok")
    service = service_for(config)

    job = upload(service, "dir/a b.txt")
    first = run_step(service, job.id, 0, "w")
    assert first.status == "retry" and first.retry_in is not None and 4 <= first.retry_in <= 6  # --backoff 5
    with service.db.session() as s:  # the backoff is over
        s.execute(update(JobRow).where(JobRow.id == job.id).values(send_after=service.db.now(s)))
    failed = run(service, job)
    assert failed.status == "failed" and [a.status for a in failed.attempts] == ["failed", "failed"]

    (letter,) = [json.loads(line) for line in fileproc(config, "functions", "dead-letters", "peek", "--json")
                 .splitlines()]
    assert letter["job"] == job.id and letter["condition"] == "RetriesExhausted" and letter["version"] == "1"
    assert "asked to fail" in letter["error"]
    record = letter["record"]
    assert record["version"] == "1.0" and record["timestamp"].endswith("Z")
    assert record["requestContext"] == {
        "requestId": f"{job.id}-0-{failed.attempts[-1].id}", "condition": "RetriesExhausted",
        "functionArn": "arn:aws:lambda:us-east-1:000000000000:function:peek:1", "approximateInvokeCount": 2}
    assert record["requestPayload"]["Records"][0]["s3"]["object"]["key"] == "dir/a+b.txt"
    assert record["responseContext"] == {"statusCode": 200, "executedVersion": "1", "functionError": "Unhandled"}
    assert record["responsePayload"]["errorType"] == "ValueError"
    wait_for(lambda: received, 10, "the on-failure destination")
    assert received[0]["path"] == "/failed" and received[0]["body"] == record

    # Fixed in version 2, then the dead letter is replayed: it succeeds, and on-success hears of it.
    deploy(config, code, "peek", "app.handler", "--on-success", f"{url}/ok")
    assert "job" in fileproc(config, "retry", "--dead-letters", "--function", "peek")
    assert "no dead letters to replay" in fileproc(config, "retry", "--dead-letters")
    replayed = run(service, job)
    assert replayed.status == "succeeded" and replayed.attempts[-1].version == "2"
    wait_for(lambda: len(received) == 2, 10, "the on-success destination")
    success = received[1]
    assert success["path"] == "/ok" and success["body"]["requestContext"]["condition"] == "Success"
    assert success["body"]["responseContext"] == {"statusCode": 200, "executedVersion": "2"}
    assert success["body"]["responsePayload"]["code"] == "v-one"


def test_an_event_past_its_maximum_age_is_dead_lettered_untried(tmp_path: Path) -> None:
    code = tmp_path / "probe"
    shutil.copytree(SAMPLES / "probe", code)
    config = make_config(tmp_path, [{"function": "peek"}])
    deploy(config, code, "peek", "app.handler", "--max-event-age", "60")
    service = service_for(config)
    job = upload(service, "old.txt")
    with service.db.session() as s:  # it waited (a backlog, workers down) for two minutes
        s.execute(update(JobRow).where(JobRow.id == job.id).values(created_at=service.db.now(s) - timedelta(minutes=2)))
    done = run(service, job)
    assert done.status == "failed" and "past its maximum age of 60 s: not tried again" in (done.error or "")
    assert done.attempts[0].duration_ms is None  # the handler never ran
    (letter,) = [json.loads(line) for line in fileproc(config, "functions", "dead-letters", "--json").splitlines()]
    assert letter["condition"] == "EventAgeExceeded"
