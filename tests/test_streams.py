"""Streams on Redis: Lambda's event source mapping semantics, with real Redis and real deployed handlers.

Each test deploys a Lambda handler with the real CLI, maps a Redis stream
to it and runs a real poller (warm runners, metering, the state database):
the event shape, order per key, checkpoints after success, retries,
bisection, partial batch failures, filters, tumbling windows, dead letters.
Killing a worker mid-batch is in test_streams_kill.py.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from fileproc.cli import cli
from fileproc.config import load_settings
from fileproc.service import Service
from fileproc.streams import admin
from fileproc.streams.poller import Poller
from tests.procs import wait_for, write_config
from tests.test_lambda import deploy, service_for

HANDLERS = '''
import base64, json, os

def _values(event):
    if "records" in event:  # Kafka
        return [json.loads(base64.b64decode(r["value"])) for rs in event["records"].values() for r in rs]
    return [json.loads(base64.b64decode(r["kinesis"]["data"])) for r in event["Records"]]

def record(event, context):
    """Returns each batch's values (recorded on its invocation: the test reads them)."""
    return {"values": _values(event)}

def shape(event, context):
    return event

def poison(event, context):
    """Fails any batch holding a value with "poison"."""
    values = _values(event)
    if any(v.get("poison") for v in values):
        raise ValueError("poison record in batch")
    return {"values": values}

def partial(event, context):
    """Reports the records with "bad" as failed the first time this runner sees them (its /tmp remembers)."""
    failures, done = [], []
    for r in event["Records"]:
        value = json.loads(base64.b64decode(r["kinesis"]["data"]))
        marker = f"/tmp/seen-{value['n']}"
        if value.get("bad") and not os.path.exists(marker):
            open(marker, "w").close()
            failures.append({"itemIdentifier": r["kinesis"]["sequenceNumber"]})
        elif not failures:
            done.append(value["n"])
    return {"done": done, "failed": len(failures), "batchItemFailures": failures}

def flaky(event, context):
    """Fails a batch holding a value with "flaky" the first time this runner sees it (its /tmp remembers)."""
    values = _values(event)
    for v in values:
        marker = f"/tmp/flaky-{v['n']}"
        if v.get("flaky") and not os.path.exists(marker):
            open(marker, "w").close()
            raise RuntimeError("flaky")
    return {"values": values}

def cpus(event, context):
    """The CPUs this invocation's process may run on."""
    return {"cpus": sorted(os.sched_getaffinity(0))}

def window(event, context):
    """Sums values per tumbling window; the final invocation returns the total."""
    state = dict(event.get("state") or {})
    state["sum"] = state.get("sum", 0) + sum(v["n"] for v in _values(event))
    if event.get("isFinalInvokeForWindow"):
        return {"state": state, "window": event["window"], "sum": state["sum"]}
    return {"state": state}
'''


@pytest.fixture
def stream_env(tmp_path: Path, redis_url: str) -> Iterator[Callable[..., tuple[Service, str]]]:
    """Deploys HANDLERS' ``handler`` and maps a fresh Redis stream to it; (service, mapping name)."""
    pollers: list[Poller] = []
    code = tmp_path / "code"
    code.mkdir()
    (code / "app.py").write_text(HANDLERS)

    def make(handler: str, **mapping: Any) -> tuple[Service, Path, str]:
        name = f"s{uuid.uuid4().hex[:8]}"
        host = redis_url.rsplit("/", 1)[0]
        streams = [{"name": name, "source": f"{host}/0/{name}", "function": handler, **mapping}]
        config = write_config(tmp_path / "fileproc.toml", {
            "data_dir": str(tmp_path / "data"), "functions": {"alias_seconds": 0}, "pipelines": [],
            "streams": streams})
        deploy(config, code, handler, f"app.{handler}")
        service = service_for(config)
        return service, name

    def start(service: Service, name: str) -> Poller:
        poller = Poller(service, admin.mapping(service, name), worker="test").start()
        pollers.append(poller)
        return poller

    make.start = start  # type: ignore[attr-defined]
    yield make
    for poller in pollers:
        poller.stop()


def put(service: Service, name: str, values: list[dict[str, Any]], key: str | None = None) -> None:
    admin.put(service, name, [(key.encode() if key else None, json.dumps(v).encode()) for v in values])


def lines(service: Service, name: str) -> list[Any]:
    """What the handler returned from each successful invocation on stream ``name``, in order."""
    jobs = sorted(service.db.list_jobs(bucket=f"stream:{name}", limit=1000), key=lambda job: job.id)
    return [job.attempts[0].result for job in jobs if job.status == "succeeded"]


def test_a_batch_reaches_the_handler_as_kinesis_event_and_is_committed_after_it_ran(stream_env: Any) -> None:
    service, name = stream_env("shape", batch_size=10)
    put(service, name, [{"n": i} for i in range(3)], key="user-1")
    poller = stream_env.start(service, name)
    wait_for(lambda: lines(service, name), timeout=30)
    (event,) = lines(service, name)
    records = event["Records"]
    assert [json.loads(base64.b64decode(r["kinesis"]["data"])) for r in records] == [{"n": 0}, {"n": 1}, {"n": 2}]
    first = records[0]
    assert first["eventSource"] == "aws:kinesis" and first["eventName"] == "aws:kinesis:record"
    assert first["kinesis"]["partitionKey"] == "user-1" and first["kinesis"]["kinesisSchemaVersion"] == "1.0"
    assert first["eventID"] == f"shardId-000000000000:{first['kinesis']['sequenceNumber']}"
    assert first["eventSourceARN"] == f"arn:aws:kinesis:us-east-1:000000000000:stream/{name}"
    assert first["awsRegion"] == "us-east-1"
    wait_for(lambda: admin.status(service, name)[0]["partitions"][0]["lag_records"] == 0, timeout=10)
    poller.stop()
    (status,) = admin.status(service, name)
    (partition,) = status["partitions"]
    assert partition["committed"] == records[-1]["kinesis"]["sequenceNumber"]
    assert partition["batches"] == 1 and partition["records"] == 3
    # The batch is an invocation like any other: its job, log and REPORT line.
    (job,) = service.db.list_jobs(bucket=f"stream:{name}")
    assert job.status == "succeeded" and job.pipeline == "_event.shape"
    full = service.db.get_job(job.id)
    assert full is not None and "REPORT RequestId:" in (full.attempts[0].log or "")


def test_a_streams_threads_share_one_cpu_and_its_function_may_use_every_cpu_of_the_worker(
        stream_env: Any) -> None:
    service, name = stream_env("cpus", batch_size=10)
    put(service, name, [{"n": 1}])
    poller = stream_env.start(service, name)
    wait_for(lambda: lines(service, name), timeout=30)
    allowed = sorted(os.sched_getaffinity(0))
    assert lines(service, name) == [{"cpus": allowed}], "the runner, started by a lane, was given every CPU back"
    threads = [poller._thread, *poller.lanes["0"]]
    assert poller.recorder is not None
    ids = [t.native_id for t in threads if t is not None] + [poller.recorder.thread_id]
    if len(allowed) > 1:
        assert {tuple(os.sched_getaffinity(i)) for i in ids if i is not None} == {(poller.cpu,)}


def test_records_run_in_order_in_batches_and_a_restart_resumes_after_the_last_commit(stream_env: Any) -> None:
    service, name = stream_env("record", batch_size=50)
    put(service, name, [{"n": i} for i in range(120)])
    poller = stream_env.start(service, name)
    wait_for(lambda: sum(len(x["values"]) for x in lines(service, name)) >= 120, timeout=30)
    poller.stop()
    batches = [x["values"] for x in lines(service, name)]
    assert [v["n"] for batch in batches for v in batch] == list(range(120))
    assert max(len(b) for b in batches) <= 50
    put(service, name, [{"n": i} for i in range(120, 130)])
    stream_env.start(service, name)
    wait_for(lambda: sum(len(x["values"]) for x in lines(service, name)) >= 130, timeout=30)
    time.sleep(0.5)
    assert [v["n"] for x in lines(service, name) for v in x["values"]] == list(range(130))  # nothing twice


def test_a_poison_record_is_isolated_by_bisection_and_given_up_alone(stream_env: Any) -> None:
    service, name = stream_env("poison", batch_size=8, bisect_on_error=True, max_retries=1)
    values = [{"n": i} for i in range(8)]
    values[5]["poison"] = True
    put(service, name, values)
    stream_env.start(service, name)
    wait_for(lambda: admin.status(service, name)[0]["partitions"][0]["failed"] == 1, timeout=60)
    done = sorted(v["n"] for x in lines(service, name) for v in x["values"])
    assert done == [0, 1, 2, 3, 4, 6, 7]
    (letter,) = __import__("fileproc.state.streams", fromlist=["dead_letters"]).dead_letters(service.db, name)
    info = letter["record"]["KinesisBatchInfo"]
    assert info["batchSize"] == 1 and letter["condition"] == "RetryAttemptsExhausted"
    assert letter["record"]["requestContext"]["functionArn"].endswith(":function:poison")
    assert "poison record" in letter["error"]


def partial_runs(stream_env: Any, count: int, bad: int, batch_size: int) -> list[Any]:
    """What each invocation of ``partial`` returned on ``count`` records whose record ``bad`` fails once."""
    service, name = stream_env("partial", batch_size=batch_size, report_batch_item_failures=True)
    values = [{"n": i} for i in range(count)]
    values[bad]["bad"] = True
    put(service, name, values)
    stream_env.start(service, name)
    wait_for(lambda: sum(len(x["done"]) for x in lines(service, name)) >= count, timeout=30)
    return lines(service, name)


def test_partial_batch_failures_retry_from_the_first_failed_record(stream_env: Any) -> None:
    runs = partial_runs(stream_env, 10, bad=6, batch_size=10)
    assert (runs[0]["done"], runs[0]["failed"]) == ([0, 1, 2, 3, 4, 5], 1)
    assert runs[1]["done"] == [6, 7, 8, 9]  # from the failed record on, once more; nothing before it again


def test_batches_sent_ahead_never_run_before_a_failed_batch_before_them_succeeded(stream_env: Any) -> None:
    # 60 records waiting in batches of 5: each next batch is sent to the runner while the one before it runs.
    service, name = stream_env("flaky", batch_size=5)
    values = [{"n": i} for i in range(60)]
    for flaky in (12, 37):
        values[flaky]["flaky"] = True
    put(service, name, values)
    stream_env.start(service, name)
    wait_for(lambda: sum(len(x["values"]) for x in lines(service, name)) >= 60, timeout=60)
    time.sleep(0.3)
    assert [v["n"] for x in lines(service, name) for v in x["values"]] == list(range(60))  # in order, once each
    jobs = service.db.list_jobs(bucket=f"stream:{name}", limit=100)
    failed = sorted(job.key.rsplit("/", 1)[1] for job in jobs if job.status == "failed")
    assert len(failed) == 2  # the two failures recorded; the batches behind them were not run (nor recorded)
    assert admin.status(service, name)[0]["partitions"][0]["lag_records"] == 0


def test_batch_item_failures_hold_the_batches_sent_ahead_until_retried(stream_env: Any) -> None:
    runs = partial_runs(stream_env, 30, bad=7, batch_size=5)
    assert [n for x in runs for n in x["done"]] == list(range(30))
    assert (runs[1]["done"], runs[1]["failed"], runs[2]["done"]) == ([5, 6], 1, [7, 8, 9])


def test_a_filter_skips_records_and_counts_them(stream_env: Any) -> None:
    service, name = stream_env("record", batch_size=100, filter=[{"data": {"kind": ["click"]}}])
    put(service, name, [{"n": i, "kind": "click" if i % 3 == 0 else "view"} for i in range(30)])
    stream_env.start(service, name)
    wait_for(lambda: admin.status(service, name)[0]["partitions"][0]["lag_records"] == 0, timeout=30)
    wait_for(lambda: admin.status(service, name)[0]["partitions"][0]["filtered"] == 20, timeout=10)
    assert sorted(v["n"] for x in lines(service, name) for v in x["values"]) == list(range(0, 30, 3))


def test_tumbling_windows_carry_state_and_their_sums_equal_the_records(stream_env: Any) -> None:
    service, name = stream_env("window", batch_size=3, tumbling_window=1)
    put(service, name, [{"n": i} for i in range(10)])
    time.sleep(1.1)
    put(service, name, [{"n": 100 + i} for i in range(5)])
    stream_env.start(service, name)
    expected = sum(range(10)) + sum(range(100, 105))
    wait_for(lambda: sum(x.get("sum", 0) for x in lines(service, name)) == expected, timeout=30)
    assert len([x for x in lines(service, name) if "sum" in x]) >= 2  # one final invocation per window


def test_put_status_and_reset_from_the_cli(stream_env: Any) -> None:
    service, name = stream_env("record")
    config = str(service.settings.config_file)
    runner = CliRunner()
    for value in ('{"n": 1}', '{"n": 2}'):
        result = runner.invoke(cli, ["--config", config, "streams", "put", name, value, "--key", "k"])
        assert result.exit_code == 0, result.output
        assert "position" in result.output
    status = json.loads(runner.invoke(cli, ["--config", config, "streams", "status", name, "--json"]).output)
    assert status[0]["partitions"][0]["lag_records"] == 2
    result = runner.invoke(cli, ["--config", config, "streams", "reset", name, "--to", "latest"])
    assert result.exit_code == 0, result.output
    status = json.loads(runner.invoke(cli, ["--config", config, "streams", "status", name, "--json"]).output)
    assert status[0]["partitions"][0]["lag_records"] == 0
    listed = json.loads(runner.invoke(cli, ["--config", config, "streams", "list", "--json"]).output)
    assert listed[0]["name"] == name and listed[0]["batch_size"] == 100
    bad = runner.invoke(cli, ["--config", config, "streams", "put", "nope", "x"])
    assert bad.exit_code != 0 and "no stream named 'nope'" in str(bad.exception or bad.output)


def test_a_bad_mapping_is_refused_at_start_naming_the_field(tmp_path: Path) -> None:
    config = write_config(tmp_path / "fileproc.toml", {"pipelines": [], "streams": [
        {"name": "x", "source": "kafka://127.0.0.1:9092", "function": "f"}]})
    with pytest.raises(Exception, match=r"streams\.0\.source"):
        load_settings(config, env={})


def test_bucket_notifications_through_a_stream_become_jobs_once(tmp_path: Path, redis_url: str) -> None:
    """kind = "notifications": MinIO's notification bodies from a stream, through the webhook's one path."""
    name = f"n{uuid.uuid4().hex[:8]}"
    host = redis_url.rsplit("/", 1)[0]
    config = write_config(tmp_path / "fileproc.toml", {
        "data_dir": str(tmp_path / "data"), "watcher": {"enabled": False},
        "pipelines": [{"name": "probed", "match": {"bucket": "inbox"}, "steps": [{"function": "probe"}],
                       "output": {"bucket": "out", "key": "{key}/{name}"}}],
        "streams": [{"name": name, "source": f"{host}/0/{name}", "kind": "notifications"}]})
    service = service_for(config)
    info = service.storage.put("inbox", "a.txt", b"hello")
    body = {"EventName": "s3:ObjectCreated:Put", "Key": "inbox/a.txt", "Records": [{
        "eventName": "s3:ObjectCreated:Put", "eventTime": "2026-12-05T12:00:00Z",
        "s3": {"bucket": {"name": "inbox"}, "object": {"key": "a.txt", "size": info.size, "eTag": info.etag}}}]}
    admin.put(service, name, [(None, json.dumps(body).encode()), (None, json.dumps(body).encode()),
                              (None, b"not a notification")])
    poller = Poller(service, admin.mapping(service, name), worker="test").start()
    try:
        wait_for(lambda: admin.status(service, name)[0]["partitions"][0]["lag_records"] == 0, timeout=30)
    finally:
        poller.stop()
    jobs = service.db.list_jobs(pipeline="probed")
    assert [(j.bucket, j.key) for j in jobs] == [("inbox", "a.txt")]  # twice notified, one job
    (partition,) = admin.status(service, name)[0]["partitions"]
    assert "not a notification" in (partition["last_error"] or "")


def test_a_runner_started_by_a_thread_that_ended_stays_warm(tmp_path: Path) -> None:
    """A forked runner dies with the thread that forked it: every one is started by a thread that lasts."""
    import threading

    from fileproc.runtime.direct import invoke_event
    from tests.procs import FUNCTIONS_DIR

    config = write_config(tmp_path / "fileproc.toml", {
        "data_dir": str(tmp_path / "data"), "functions": {"paths": [str(FUNCTIONS_DIR)]}, "pipelines": []})
    service = service_for(config)
    service.storage.ensure_bucket(service.settings.functions.bucket)
    found = []

    def once() -> None:
        found.append(invoke_event(service, "tiny", {"Records": []}, trigger="thread", what="x"))

    for _ in range(2):  # each time from a thread that ends right after (a stream's lane, a web server's thread)
        thread = threading.Thread(target=once)
        thread.start()
        thread.join()
        time.sleep(0.3)  # (a runner tied to the ended thread is dead by now)
    first, second = found
    assert first.ok and second.ok, (first.error, second.error)
    assert first.cold and second.cold is False


def test_a_package_folder_removed_under_a_busy_function_is_installed_again(stream_env: Any) -> None:
    from fileproc.rules import Step
    from fileproc.runtime.direct import invoke_event

    service, _ = stream_env("record")
    assert invoke_event(service, "record", {"Records": []}, trigger="t", what="first").ok
    folder = service.spec(Step(function="record")).handler.folder
    shutil.rmtree(folder)
    for n in range(15):  # invoked again and again, as a stream's batches are, for 1.5 s
        assert invoke_event(service, "record", {"Records": []}, trigger="t", what=str(n)).ok
        time.sleep(0.1)
    assert (folder / "code" / "app.py").is_file()  # looked for at most once a second, and installed again


def test_a_dead_letter_replays_its_records_from_the_stream_once_the_function_is_fixed(
        stream_env: Any, tmp_path: Path) -> None:
    service, name = stream_env("poison", batch_size=4, max_retries=0)
    put(service, name, [{"n": 0}, {"n": 1, "poison": True}, {"n": 2}, {"n": 3}])
    poller = stream_env.start(service, name)
    wait_for(lambda: admin.status(service, name)[0]["partitions"][0]["failed"] == 4, timeout=30)
    poller.stop()
    from fileproc.state.streams import dead_letters

    (letter,) = dead_letters(service.db, name)
    config = str(service.settings.config_file)
    refused = CliRunner().invoke(cli, ["--config", config, "streams", "dead-letters", "--replay", str(letter["id"])])
    assert refused.exit_code == 1 and "poison record in batch" in refused.output  # still broken: still failing
    fixed = tmp_path / "fixed"
    fixed.mkdir()
    (fixed / "app.py").write_text("import base64, json\n\ndef poison(event, context):\n"
                                  "    return {'values': [json.loads(base64.b64decode(r['kinesis']['data']))"
                                  " for r in event['Records']]}\n")
    deploy(service.settings.config_file, fixed, "poison", "app.poison")  # version 2, live
    replayed = CliRunner().invoke(cli, ["--config", config, "streams", "dead-letters", "--replay", str(letter["id"])])
    assert replayed.exit_code == 0, replayed.output
    assert "4 of its 4 records ran" in replayed.output
    assert [v["n"] for v in lines(service, name)[-1]["values"]] == [0, 1, 2, 3]
    (again,) = dead_letters(service.db, name)
    assert again["replayed_at"] is not None


PARALLEL = '''
import base64, json, time

def handler(event, context):
    started = time.time()
    time.sleep(0.3)
    return {"values": [json.loads(base64.b64decode(r["kinesis"]["data"])) for r in event["Records"]],
            "started": started, "ended": time.time()}
'''


def test_a_parallelization_factor_runs_batches_of_one_partition_at_once_each_key_in_order(
        tmp_path: Path, redis_url: str) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "app.py").write_text(PARALLEL)
    host = redis_url.rsplit("/", 1)[0]
    name = f"p{uuid.uuid4().hex[:8]}"
    config = write_config(tmp_path / "fileproc.toml", {
        "data_dir": str(tmp_path / "data"), "functions": {"alias_seconds": 0}, "pipelines": [],
        "streams": [{"name": name, "source": f"{host}/0/{name}", "function": "par", "batch_size": 5,
                     "parallelization_factor": 3}]})
    deploy(config, code, "par", "app.handler")
    service = service_for(config)
    keys = [f"key{i}" for i in range(6)]
    for i in range(60):
        put(service, name, [{"key": keys[i % 6], "i": i // 6}], key=keys[i % 6])
    poller = Poller(service, admin.mapping(service, name), worker="test").start()
    try:
        wait_for(lambda: sum(len(r["values"]) for r in lines(service, name)) >= 60, timeout=60)
    finally:
        poller.stop()
    runs = lines(service, name)
    values = [v for r in runs for v in r["values"]]
    assert len(values) == 60
    for key in keys:
        assert [v["i"] for v in values if v["key"] == key] == list(range(10))  # each key in order, once
    spans = sorted((r["started"], r["ended"]) for r in runs)
    overlapping = sum(1 for (_, end), (start, _) in itertools.pairwise(spans) if start < end)
    assert overlapping >= len(runs) // 2  # batches of the one partition ran at the same time


def test_records_past_their_maximum_age_are_given_up_and_delivered_to_on_failure(
        stream_env: Any, tmp_path: Path) -> None:
    from fileproc.serverless.destinations import redeliver
    from tests.servers import free_port
    from tests.test_lambda_destinations import receiver

    port = free_port()
    server, received = receiver(port)
    try:
        service, name = stream_env("poison", batch_size=10, max_record_age=1,
                                   on_failure=f"http://127.0.0.1:{port}/failed")
        put(service, name, [{"n": 1, "poison": True}])
        stream_env.start(service, name)
        wait_for(lambda: admin.status(service, name)[0]["partitions"][0]["failed"] == 1, timeout=30)
        wait_for(lambda: redeliver(service.db) or received, timeout=10)
    finally:
        server.shutdown()
    (posted,) = received
    record = posted["body"]
    assert record["requestContext"]["condition"] == "RecordAgeExceeded"
    assert record["KinesisBatchInfo"]["batchSize"] == 1
    assert record["KinesisBatchInfo"]["streamArn"].endswith(f":stream/{name}")


def test_a_sources_password_is_never_shown(stream_env: Any) -> None:
    service, name = stream_env("record")
    config = str(service.settings.config_file)
    password = admin.mapping(service, name).source.split("@")[0].rsplit(":", 1)[1]
    assert password  # (the test Redis has one)
    for args in (["streams", "list"], ["streams", "list", "--json"], ["streams", "status"],
                 ["streams", "status", "--json"]):
        shown = CliRunner().invoke(cli, ["--config", config, *args]).output
        assert name in shown and password not in shown and ":***@" in shown


def test_logs_of_one_batch_by_its_request_id(stream_env: Any) -> None:
    service, name = stream_env("shape")
    stream_env.start(service, name)
    for n in (1, 2):  # two batches, one after the other
        put(service, name, [{"n": n}])
        wait_for(lambda n=n: len(lines(service, name)) == n, timeout=30)
    config = str(service.settings.config_file)
    everything = CliRunner().invoke(cli, ["--config", config, "logs", "shape"]).output
    request_ids = [line.split()[2] for line in everything.splitlines() if line.startswith("START RequestId:")]
    assert len(request_ids) == 2
    one = CliRunner().invoke(cli, ["--config", config, "logs", "shape", "--request", request_ids[1]])
    assert one.exit_code == 0, one.output
    assert request_ids[1] in one.output and request_ids[0] not in one.output
