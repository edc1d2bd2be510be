"""The dashboard's Functions pages, health and jobs list, in-process (Starlette's TestClient).

Real parts: SQLite and local storage in a temp dir, a function deployed
with the CLI, steps run by :func:`run_step` as a worker runs them. The
browser drives the same pages in tests/test_ui_functions_browser.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from fileproc import dispatch
from fileproc.app import build
from fileproc.cli import cli
from fileproc.config import load_settings
from fileproc.events import ObjectEvent
from fileproc.runtime.runner import run_step
from fileproc.service import Service
from fileproc.state import Job
from fileproc.state.heartbeats import beat, forget
from fileproc.tokens import Tokens
from fileproc.web import create_app
from tests.procs import write_config
from tests.test_api import ADMIN, WEBHOOK
from tests.test_ui import log_in

HANDLER = '''
def handler(event, context):
    key = event["Records"][0]["s3"]["object"]["key"]
    print("looking at", key)
    if "bad" in key:
        raise ValueError("cannot take " + key)
    return {"seen": key, "version": VERSION}

VERSION = "one"
'''


def cli_ok(config: Path, *args: str) -> str:
    result = CliRunner().invoke(cli, ["--config", str(config), *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path / "fileproc.toml", {
        "data_dir": str(tmp_path / "data"), "functions": {"alias_seconds": 0},
        # Nothing listens here: sends fail fast and stay due in the outbox (steps are run by hand).
        "broker": {"url": "redis://127.0.0.1:9/0"},
        "api": {"webhook_token": WEBHOOK, "admin_token": ADMIN},
        "pipelines": [{"name": "echoes", "match": {"bucket": "inbox"}, "steps": [{"function": "echo"}],
                       "output": {"bucket": "out", "key": "{key}/{name}"}}]})


@pytest.fixture
def service(tmp_path: Path, config: Path) -> Service:
    code = tmp_path / "echo"
    code.mkdir()
    (code / "app.py").write_text(HANDLER)
    for version in ("one", "two"):
        (code / "app.py").write_text(HANDLER.replace('VERSION = "one"', f'VERSION = "{version}"'))
        cli_ok(config, "functions", "deploy", str(code), "--name", "echo", "--handler", "app.handler",
               "--retries", "0", "--memory", "256", "--env", "GREETING=hi")
    built = build(load_settings(config, env={}))
    built.prepare_buckets()
    return built


@pytest.fixture
def client(service: Service) -> Iterator[TestClient]:
    with TestClient(create_app(service, Tokens(WEBHOOK, ADMIN)), follow_redirects=False) as test_client:
        log_in(test_client)
        yield test_client


def upload_and_run(service: Service, key: str) -> Job:
    info = service.storage.put("inbox", key, b"hello")
    (item,) = dispatch.submit(service, ObjectEvent("inbox", key, size=info.size, etag=info.etag), send=False)
    run_step(service, item.job.id, 0, "test-worker")
    done = service.db.get_job(item.job.id)
    assert done is not None
    return done


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found
    return found.group(1)


def test_the_list_shows_each_function_with_its_live_version_and_error_rate(service: Service,
                                                                          client: TestClient) -> None:
    assert upload_and_run(service, "good.txt").status == "succeeded"
    assert upload_and_run(service, "bad.txt").status == "failed"
    page = client.get("/ui/functions").text
    assert 'href="/ui/functions"' in page  # in the navigation
    row = re.search(r'<tr class="function" data-key="fn-echo".*?</tr>', page, re.S)
    assert row, page
    text = " ".join(re.sub(r"<[^>]+>", " ", row.group(0)).split())
    assert "deployed" in text and "v2 of 2" in text and "live →v2" in text
    assert "256 MB" in text and "50.0 %" in text and "never" not in text
    assert 'data-function="thumbnail"' in page  # the built-in ones too


def test_a_functions_page_graphs_its_monitoring_and_shows_its_logs_and_errors(service: Service,
                                                                             client: TestClient) -> None:
    good, bad = upload_and_run(service, "good.txt"), upload_and_run(service, "bad.txt")
    for window in ("1h", "24h", "7d"):
        page = client.get("/ui/functions/echo", params={"window": window}).text
        assert re.search(r'id="total-invocations">2<', page) and re.search(r'id="total-errors">1<', page), window
        for chart in ("invocations", "errors", "throttles", "duration", "concurrent", "cold"):
            assert re.search(rf'id="chart-{chart}"><figcaption>.*?<svg class="chart"', page, re.S), chart
    assert re.search(r"<title>[12] invocations, \w{3} \d\d:\d\d–\d\d:\d\d UTC</title>", page)  # a bar's slot
    assert "<title>1 errors," in page
    assert re.search(r"<title>p50 \d+ ms,", page)  # a point of the duration's percentiles, with its slot
    assert "http://" not in page and "https://" not in page and "<script>" not in page  # drawn here, as SVG
    # Its invocations: the log (START ... REPORT), the result, and the error object of the failure.
    assert f"{good.id}-0-{good.attempts[0].id}" in page and f"{bad.id}-0-{bad.attempts[0].id}" in page
    assert "START RequestId" in page and "looking at good.txt" in page and "REPORT RequestId" in page
    assert "&#34;seen&#34;: &#34;good.txt&#34;" in page or '"seen": "good.txt"' in page
    assert "error object" in page and "cannot take bad.txt" in page
    # Versions and configuration.
    assert "Roll back to v1" in page and "GREETING=hi" in page and "app.handler" in page
    assert client.get("/ui/functions/nothing-here").status_code == 404


def test_rollback_moves_live_to_an_older_version(service: Service, client: TestClient) -> None:
    page = client.get("/ui/functions/echo").text
    answer = client.post("/ui/functions/echo/rollback", data={"csrf": csrf_of(page), "version": "1"})
    assert answer.status_code == 303
    page = client.get(answer.headers["location"]).text
    assert "live is now version 1" in page and "Make live: v2" in page
    assert upload_and_run(service, "after.txt").attempts[0].result == {"seen": "after.txt", "version": "one"}
    assert client.post("/ui/functions/echo/rollback", data={"csrf": "wrong", "version": "2"}).status_code == 403


def test_a_saved_test_event_is_offered_again_and_invokes_the_function(service: Service, client: TestClient) -> None:
    service.storage.put("inbox", "sample.txt", b"hello")
    page = client.get("/ui/functions/echo").text
    event = '{"Records": [{"s3": {"bucket": {"name": "inbox"}, "object": {"key": "sample.txt"}}}]}'
    saved = client.post("/ui/functions/echo/invoke", data={"csrf": csrf_of(page), "event": event, "action": "save",
                                                          "name": "sample"})
    assert saved.status_code == 303
    page = client.get(saved.headers["location"]).text
    assert 'option value="sample" selected' in page and "sample.txt" in page
    refused = client.post("/ui/functions/echo/invoke", data={"csrf": csrf_of(page), "event": "{not json",
                                                            "action": "invoke"})
    assert refused.status_code == 400 and "not a JSON object" in refused.text
    missing = client.post("/ui/functions/echo/invoke", data={
        "csrf": csrf_of(page), "action": "invoke", "event": event.replace("sample.txt", "gone.txt")})
    assert missing.status_code == 404 and "gone.txt" in missing.text
    invoked = client.post("/ui/functions/echo/invoke", data={"csrf": csrf_of(page), "event": event,
                                                            "action": "invoke"})
    assert invoked.status_code == 303 and invoked.headers["location"].startswith("/ui/jobs/")
    job_id = int(invoked.headers["location"].rsplit("/", 1)[1])
    run_step(service, job_id, 0, "test-worker")
    job_page = client.get(f"/ui/jobs/{job_id}").text
    assert "invoke (async) echo" in job_page and "_invoke." not in job_page.split("<main", 1)[1]
    assert "<code>v2</code>" in job_page  # the version that ran
    assert "START RequestId" in job_page and "looking at sample.txt" in job_page
    jobs_page = client.get("/ui/jobs").text
    assert "invoke (async) echo" in jobs_page


def test_dead_letters_are_redriven_one_selected_or_all(service: Service, client: TestClient) -> None:
    failed = [upload_and_run(service, f"bad-{n}.txt") for n in range(4)]
    page = client.get("/ui/functions/echo").text
    assert all(f'href="/ui/jobs/{job.id}"' in page for job in failed)
    letters = [int(n) for n in re.findall(r'name="letter" value="(\d+)"', page)]
    assert len(letters) == 4
    csrf = csrf_of(page)

    def redrive(**fields: object) -> str:
        answer = client.post("/ui/functions/echo/redrive", data={"csrf": csrf, **fields})
        assert answer.status_code == 303
        return client.get(answer.headers["location"]).text

    assert "Redrove 1 dead letter(s)" in redrive(one=str(letters[0]))
    assert service.db.get_job(failed[0].id).status == "queued"
    assert "Redrove 2 dead letter(s)" in redrive(letter=[str(letters[1]), str(letters[2])], selected="1")
    page = redrive(all="1")
    assert "Redrove 1 dead letter(s)" in page and "None waiting." in page
    assert all(service.db.get_job(job.id).status == "queued" for job in failed)


def test_the_jobs_list_counts_steps_done_and_tries_per_step(service: Service, client: TestClient) -> None:
    done = upload_and_run(service, "good.txt")
    info = service.storage.put("inbox", "waiting.txt", b"hello")
    (waiting,) = dispatch.submit(service, ObjectEvent("inbox", "waiting.txt", size=info.size, etag=info.etag),
                                 send=False)
    page = client.get("/ui/jobs").text

    def row(job_id: int) -> str:
        found = re.search(rf'<tr data-job="{job_id}".*?</tr>', page, re.S)
        assert found
        return re.sub(r"\s+", " ", found.group(0))

    assert re.search(r'title="all 1 step\(s\) done">1/1<', row(done.id))
    assert re.search(r'title="0 of 1 step\(s\) done; step 1 queued">0/1<', row(waiting.job.id))
    assert re.search(r'title="step 1: 1 tries">1<', row(done.id))
    assert re.search(r'title="step 1: 0 tries">0<', row(waiting.job.id))
    assert '<time datetime="' in row(done.id) and 'UTC">' in row(done.id)  # the exact time on hover
    assert 'class="skip" href="#main"' in page and 'id="jobs" data-live aria-live="polite"' in page


def test_a_retried_jobs_queued_again_note_goes_once_it_failed_again(service: Service, client: TestClient) -> None:
    failed = upload_and_run(service, "bad.txt")
    page = client.get(f"/ui/jobs/{failed.id}").text
    answer = client.post(f"/ui/jobs/{failed.id}/retry", data={"csrf": csrf_of(page)})
    assert "Queued again" in client.get(answer.headers["location"]).text
    run_step(service, failed.id, 0, "test-worker")
    again = client.get(answer.headers["location"]).text  # the page's live refresh asks the same URL
    assert "Queued again" not in again and "Failed:" in again


def test_the_overview_shows_workers_heartbeats_and_each_part_up_or_down(service: Service, client: TestClient) -> None:
    page = client.get("/ui").text
    assert "No worker has reported" in page
    assert re.search(r'id="part-database" data-ok="true"', page) and re.search(r'id="part-storage" data-ok="true"',
                                                                              page)
    # The broker of this config has nothing listening: down, with the reason, and said at the top.
    assert re.search(r'id="part-broker" data-ok="false"', page)
    assert "Broker down:" in page and "connection refused" in page
    from datetime import UTC, datetime

    beat(service.db, "fileproc-1@host-a", queues=["thumbnail", "deployed"], concurrency=4,
         started_at=datetime.now(UTC))
    page = client.get("/ui").text
    worker = re.search(r'<tr class="worker".*?</tr>', page, re.S)
    assert worker and "fileproc-1@host-a" in worker.group(0) and "<code>deployed</code>" in worker.group(0)
    assert "0 of 4" in worker.group(0) and 'data-silent="false"' in worker.group(0)
    forget(service.db, "fileproc-1@host-a")
    assert "No worker has reported" in client.get("/ui").text


def test_usage_shows_totals_and_a_graph_by_day(service: Service, client: TestClient) -> None:
    upload_and_run(service, "good.txt")
    upload_and_run(service, "bad.txt")
    page = client.get("/ui/usage").text
    assert re.search(r"<span class=\"muted small\">requests</span><b>2</b>", page)
    assert re.search(r"<span class=\"muted small\">errors</span><b class=\"bad\">1</b>", page)
    assert 'aria-label="requests by day (UTC)"' in page and "<rect" in page
    assert re.search(r'<tr class="sum"><td>all</td><td>2</td>', page)
