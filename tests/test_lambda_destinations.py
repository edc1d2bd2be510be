"""A deployed function's retries, maximum event age, dead letters and destination webhooks.

The destinations are a real HTTP server on loopback; the records it gets
must have Lambda's destination record shape. A record is owed from the
step's end (in the same transaction): one that the receiver could not take
then is delivered by the relay once it can.
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
from sqlalchemy import delete, update

from fileproc.runtime.outbox import Relay
from fileproc.runtime.runner import run_step
from fileproc.serverless.destinations import owed, redeliver
from fileproc.service import Service
from fileproc.state import Database, StepEnd, StepStart
from fileproc.state.deliveries import list_deliveries
from fileproc.state.deployments import resolve
from fileproc.state.models import DeliveryRow, JobRow
from tests.procs import wait_for
from tests.servers import free_port
from tests.test_lambda import SAMPLES, deploy, fileproc, make_config, run, service_for, upload


@pytest.fixture
def destination() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A webhook that keeps what is POSTed to it: (its URL, the records received)."""
    server, received = receiver(0)
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()


def receiver(port: int) -> tuple[ThreadingHTTPServer, list[dict[str, Any]]]:
    """A webhook on ``port`` (0: any free one), serving, and the records it received."""
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append({"path": self.path,
                             "body": json.loads(self.rfile.read(int(self.headers["Content-Length"])))})
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, received


def deployed_peek(tmp_path: Path, *options: str) -> tuple[Path, Service]:
    """The probe sample deployed as ``peek`` (``fileproc functions deploy`` with ``options``): its config, a service."""
    code = tmp_path / "probe"
    shutil.copytree(SAMPLES / "probe", code)
    config = make_config(tmp_path, [{"function": "peek"}])
    deploy(config, code, "peek", "app.handler", *options)
    return config, service_for(config)


def test_retries_dead_letters_replay_and_destinations(tmp_path: Path,
                                                      destination: tuple[str, list[dict[str, Any]]]) -> None:
    url, received = destination
    config, service = deployed_peek(tmp_path, "--env", "MODE=fail", "--retries", "1", "--backoff", "5",
                                    "--on-failure", f"{url}/failed", "--on-success", f"{url}/ok")

    job = upload(service, "dir/a b.txt")
    first = run_step(service, job.id, 0, "w")
    assert first.status == "retry" and first.retry_in is not None and 4 <= first.retry_in <= 6  # --backoff 5
    with service.db.session() as s:  # the backoff is over
        s.execute(update(JobRow).where(JobRow.id == job.id).values(send_after=service.db.now(s)))
    failed = run(service, job)
    assert failed.status == "failed" and [a.status for a in failed.attempts] == ["failed", "failed"]

    (letter,) = json.loads(fileproc(config, "functions", "dead-letters", "peek", "--json"))
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
    # (A redeploy keeps the configuration no flag changes, as Lambda's update-function-code: MODE=fail goes.)
    deploy(config, tmp_path / "probe", "peek", "app.handler", "--clear-env", "--on-success", f"{url}/ok")
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
    config, service = deployed_peek(tmp_path, "--max-event-age", "60")
    job = upload(service, "old.txt")
    with service.db.session() as s:  # it waited (a backlog, workers down) for two minutes
        s.execute(update(JobRow).where(JobRow.id == job.id).values(created_at=service.db.now(s) - timedelta(minutes=2)))
    done = run(service, job)
    assert done.status == "failed" and "past its maximum age of 60 s: not tried again" in (done.error or "")
    assert done.attempts[0].duration_ms is None  # the handler never ran
    (letter,) = json.loads(fileproc(config, "functions", "dead-letters", "--json"))
    assert letter["condition"] == "EventAgeExceeded"


def deliveries(config: Path, *options: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = json.loads(fileproc(config, "functions", "deliveries", "--json", *options))
    return found


def test_a_record_the_destination_could_not_take_is_delivered_by_the_relay_once_it_is_up(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there when the step ends
    config, service = deployed_peek(tmp_path, "--on-success", f"http://127.0.0.1:{port}/ok")
    job = upload(service, "late news.txt")
    done = run(service, job)
    assert done.status == "succeeded"

    # The worker's own try (right after the commit) found nobody: the delivery waits, with why.
    (pending,) = wait_for(lambda: [d for d in deliveries(config, "peek") if d["attempts"]], 10, "the worker's try")
    assert pending["state"] == "pending" and pending["job"] == job.id and pending["condition"] == "Success"
    assert "ConnectError" in pending["last_error"]
    assert "pending, next try" in fileproc(config, "functions", "deliveries")

    server, received = receiver(port)
    relay = Relay(service).start()
    try:
        wait_for(lambda: received, 30, "the relay's delivery")
        wait_for(lambda: not deliveries(config), 10, "the delivery marked done")
    finally:
        relay.stop()
        server.shutdown()
    (got,) = received
    record = got["body"]
    assert got["path"] == "/ok" and record["version"] == "1.0" and record["timestamp"].endswith("Z")
    assert record["requestContext"] == {
        "requestId": f"{job.id}-0-{done.attempts[-1].id}", "condition": "Success",
        "functionArn": "arn:aws:lambda:us-east-1:000000000000:function:peek:1", "approximateInvokeCount": 1}
    assert record["requestPayload"]["Records"][0]["s3"]["object"]["key"] == "late+news.txt"
    assert record["responseContext"] == {"statusCode": 200, "executedVersion": "1"}
    assert record["responsePayload"]["code"] == "v-one"
    (delivered,) = deliveries(config, "--all")
    assert delivered["state"] == "delivered" and delivered["attempts"] >= 2 and delivered["record"] == record


def test_an_attempt_whose_end_is_refused_owes_no_record(tmp_path: Path,
                                                        destination: tuple[str, list[dict[str, Any]]]) -> None:
    url, received = destination
    _, service = deployed_peek(tmp_path, "--on-success", f"{url}/ok")
    job = upload(service, "twice.txt")
    # A worker took the step and was cut off (its lease ran out); another took it over and finished it.
    doomed = service.db.start_step(job.id, 0, "doomed", lease_seconds=0, function_of=service.function_name)
    assert isinstance(doomed, StepStart)
    assert run(service, job).status == "succeeded"
    wait_for(lambda: received, 10, "the winner's record")

    # The cut-off attempt ends late: its end is refused, and with it the record it would owe.
    version = resolve(service.db, "peek")
    record = {"requestContext": {"requestId": f"{job.id}-0-{doomed.attempt_id}", "condition": "Success"}}
    late = StepEnd(job_id=job.id, step_index=0, attempt_id=doomed.attempt_id, attempt_status="succeeded",
                   outcome="succeeded", delivery=owed(f"{url}/ok", version, record))
    assert service.db.finish_step(late) is False
    owed_records = list_deliveries(service.db, delivered=True)
    assert [d["request_id"] for d in owed_records] == [received[0]["body"]["requestContext"]["requestId"]]
    assert redeliver(service.db) == 0 and len(received) == 1


def test_a_record_nobody_takes_for_24_hours_is_given_up(tmp_path: Path) -> None:
    config, service = deployed_peek(tmp_path, "--on-failure", f"http://127.0.0.1:{free_port()}/failed",
                                    "--env", "MODE=fail", "--retries", "0")
    job = upload(service, "lost.txt")
    assert run(service, job).status == "failed"
    wait_for(lambda: [d for d in deliveries(config) if d["attempts"]], 10, "the worker's try")
    with service.db.session() as s:  # a day later, and due again
        now = service.db.now(s)
        s.execute(update(DeliveryRow).values(created_at=now - timedelta(hours=24), next_at=now))
    assert redeliver(service.db) == 0
    (given_up,) = deliveries(config, "peek")
    assert given_up["state"] == "given up" and given_up["condition"] == "RetriesExhausted"
    assert given_up["attempts"] == 2 and "ConnectError" in given_up["last_error"]
    assert "given up after 2 tries: ConnectError" in fileproc(config, "functions", "deliveries")


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_two_relays_never_post_the_same_record(tmp_path: Path, database: str, request: pytest.FixtureRequest,
                                               destination: tuple[str, list[dict[str, Any]]]) -> None:
    url, received = destination
    db_url = request.getfixturevalue("postgres_url") if database == "postgres" else f"sqlite:///{tmp_path}/state.db"
    first, second = Database(db_url), Database(db_url)  # two processes' own connections
    with first.session() as s:  # a clean slate (on the shared server), then 100 records due
        s.execute(delete(DeliveryRow))
        now = first.now(s)
        s.add_all(DeliveryRow(job_id=n, function="peek", request_id=f"r-{n}", condition="Success", url=f"{url}/ok",
                              record={"requestContext": {"requestId": f"r-{n}"}}, next_at=now) for n in range(100))
    start = threading.Barrier(2)

    def relay(db: Database) -> None:
        start.wait()
        redeliver(db)

    threads = [threading.Thread(target=relay, args=(db,)) for db in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    posted = sorted(r["body"]["requestContext"]["requestId"] for r in received)
    assert posted == sorted(f"r-{n}" for n in range(100))  # each once
    assert not list_deliveries(first) and {d["attempts"] for d in list_deliveries(first, delivered=True)} == {1}
