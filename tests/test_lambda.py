"""Deployed user functions, without a broker: Lambda parity, versions, errors, logs and usage.

Real local storage and SQLite in a temp dir; functions are deployed with the
real CLI and their steps run in real warm runners (``run_step``), exactly as
in a worker. The S3 path (boto3 against versitygw) is in test_e2e_lambda.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import tempfile
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from PIL import Image

from fileproc import dispatch
from fileproc.app import build
from fileproc.cli import cli
from fileproc.config import load_settings
from fileproc.events import ObjectEvent
from fileproc.runtime.pool import pool
from fileproc.runtime.runner import run_step
from fileproc.sandbox import isolation
from fileproc.serverless import packages
from fileproc.service import Service
from fileproc.state import Job
from tests.helpers import image_bytes
from tests.procs import Process, wait_for, write_config

SAMPLES = Path(__file__).parent / "lambda_functions"


def make_config(tmp_path: Path, steps: list[dict[str, Any]], extra: list[dict[str, Any]] = (),  # type: ignore[assignment]
                database: str | None = None) -> Path:
    pipelines = [{"name": "p", "match": {"bucket": "inbox"}, "steps": steps,
                  "output": {"bucket": "out", "key": "{key}/{name}"}}, *extra]
    settings: dict[str, Any] = {"data_dir": str(tmp_path / "data"), "functions": {"alias_seconds": 0},
                                "pipelines": pipelines}
    if database:
        settings["database"] = {"url": database}
    return write_config(tmp_path / "fileproc.toml", settings)


def fileproc(config: Path, *args: str) -> str:
    result = CliRunner().invoke(cli, ["--config", str(config), *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def deploy(config: Path, path: Path, name: str, handler: str, *options: str) -> str:
    return fileproc(config, "functions", "deploy", str(path), "--name", name, "--handler", handler, *options)


def service_for(config: Path) -> Service:
    service = build(load_settings(config, env={}))
    service.prepare_buckets()
    return service


def upload(service: Service, key: str, data: bytes = b"hello", bucket: str = "inbox") -> Job:
    info = service.storage.put(bucket, key, data)
    (item,) = dispatch.submit(service, ObjectEvent(bucket, key, size=info.size, etag=info.etag), send=False)
    return item.job


def run(service: Service, job: Job) -> Job:
    run_step(service, job.id, 0, "test-worker")
    done = service.db.get_job(job.id)
    assert done is not None
    return done


def wheel(folder: Path) -> Path:
    """A real wheel of a one-module package `greeting` (installed by pip from the function's requirements)."""
    files = {
        "greeting.py": b"def hello():\n    return 'hello from a requirement'\n",
        "greeting-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: greeting\nVersion: 1.0\n",
        "greeting-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                        b"Tag: py3-none-any\n",
    }

    def digest(data: bytes) -> str:
        return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()

    record = "".join(f"{name},sha256={digest(data)},{len(data)}\n" for name, data in files.items())
    record += "greeting-1.0.dist-info/RECORD,,\n"
    path = folder / "greeting-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        archive.writestr("greeting-1.0.dist-info/RECORD", record)
    return path


def test_a_deployed_handler_gets_lambdas_event_context_environment_and_its_requirements(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    code = tmp_path / "probe"
    shutil.copytree(SAMPLES / "probe", code)
    wheel(code)
    (tmp_path / "requirements.txt").write_text("./greeting-1.0-py3-none-any.whl\n")
    config = make_config(tmp_path, [{"function": "peek"}])
    out = deploy(config, code, "peek", "app.handler", "--memory", "256", "--timeout", "20",
                 "--requirements", str(tmp_path / "requirements.txt"), "--env", "GREETING=hi")
    assert "deployed peek version 1 (live)" in out
    monkeypatch.setenv("FILEPROC_TEST_SECRET", "the worker's, not the function's")
    marker = Path(tempfile.mkstemp(prefix="fileproc-host-only-", dir="/tmp")[1])
    request.addfinalizer(marker.unlink)
    service = service_for(config)

    done = run(service, upload(service, "dir/a b.txt"))
    assert done.status == "succeeded", done.attempts
    (attempt,) = done.attempts
    result = attempt.result
    assert result["code"] == "v-one" and result["greeting"] == "hello from a requirement"

    record = result["record"]
    assert record["s3"]["object"]["key"] == "dir/a+b.txt"  # URL-encoded, as AWS sends it
    assert record["awsRegion"] == "us-east-1" and record["eventSource"] == "aws:s3"
    assert record["userIdentity"]["principalId"] and record["s3"]["bucket"]["ownerIdentity"]["principalId"]
    assert record["requestParameters"]["sourceIPAddress"] and record["responseElements"]["x-amz-request-id"]
    assert record["s3"]["configurationId"] == "p" and record["s3"]["object"]["sequencer"]

    context = result["context"]
    assert context["arn"] == "arn:aws:lambda:us-east-1:000000000000:function:peek"  # 7 parts, as Lambda's
    assert context["memory"] == "256" and context["version"] == "1"  # a str, as Lambda gives it
    assert context["group"] == "/aws/lambda/peek"
    assert re.fullmatch(r"\d{4}/\d\d/\d\d/\[1\][0-9a-f]{32}", context["stream"])
    assert context["identity"] is None and context["client_context"] is None
    assert 0 < context["remaining"] <= 20_000

    env = result["env"]
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == "peek" and env["AWS_LAMBDA_FUNCTION_VERSION"] == "1"
    assert env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "256" and env["_HANDLER"] == "app.handler"
    assert env["AWS_LAMBDA_LOG_STREAM_NAME"] == context["stream"] and env["GREETING"] == "hi"
    assert env["AWS_REGION"] == "us-east-1" and env["AWS_EXECUTION_ENV"].startswith("AWS_Lambda_python3")
    assert not [name for name in env if name.startswith("FILEPROC_")]  # nothing of fileproc's
    # /tmp is the function's own (a tmpfs in a mount namespace of its runner), as on Lambda.
    assert env["TMPDIR"] == "/tmp" and Path(result["tmp"]).parent == Path("/tmp")
    assert marker.name not in result["tmp_listing"]  # the host's /tmp is not seen...
    assert not Path(result["tmp"]).exists()  # ...and what the function writes there stays in its own

    assert [o.key for o in done.outputs] == ["dir/a b.txt/seen.txt"]  # context.output works, confined
    assert service.storage.open("out", "dir/a b.txt/seen.txt").read() == b"seen"
    assert attempt.version == "1" and attempt.memory_mb == 256
    assert attempt.billed_ms is not None and attempt.billed_ms >= max(1, attempt.duration_ms or 0)
    request_id = f"{job_id}-0-{attempt.id}" if (job_id := done.id) else ""
    log = attempt.log or ""
    assert log.startswith(f"probe imported\nSTART RequestId: {request_id} Version: 1\n")
    assert "hello from peek\n" in log and "and from a child process\n" in log
    assert re.search(rf"\[INFO\]\t\S+Z\t{request_id}\tthe key is dir/a\+b.txt\n", log)
    assert f"END RequestId: {request_id}\n" in log
    assert re.search(rf"REPORT RequestId: {request_id}\tDuration: [\d.]+ ms\tBilled Duration: {attempt.billed_ms} ms"
                     rf"\tMemory Size: 256 MB\tMax Memory Used: \d+ MB\n$", log)
    assert fileproc(config, "logs", "peek", "--request", request_id) == log


def test_a_deployed_functions_runner_holds_nothing_of_the_worker(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Its runner is a fresh interpreter: no descriptor, variable, object or secret of the worker's.

    Both ways a runner starts are probed: at once (no interpreter started
    ahead yet), and as the interpreter the pool started ahead.
    """
    code = tmp_path / "probe"
    shutil.copytree(SAMPLES / "probe", code)
    secrets = {"api": {"admin_token": "worker-admin-token-0a1b2c", "webhook_token": "worker-webhook-token-3d4e5f"},
               "broker": {"url": "redis://:worker-broker-password@127.0.0.1:1/0"},
               "storage": {"access_key": "worker-access-key", "secret_key": "worker-s3-secret-6a7b8c"}}
    config = make_config(tmp_path, [{"function": "peek"}], extra=[
        {"name": "second", "match": {"bucket": "second"}, "steps": [{"function": "peek2"}],
         "output": {"bucket": "out", "key": "{key}/{name}"}}])
    write_config(config, {**tomllib.loads(config.read_text()), **secrets})
    settings = load_settings(config, env={})
    values = [settings.database_url, settings.api.admin_token.get_secret_value(),
              settings.api.webhook_token.get_secret_value(), settings.broker.url.get_secret_value(),
              settings.storage.secret_key.get_secret_value(), "the worker's, not the function's"]
    hashes = {hashlib.sha256(value.encode()).hexdigest(): value for value in values}
    state = (settings.data_dir / "state.db").resolve()
    # fileproc's own files (its state, its config) and another function's package are out of its reach.
    digest = hashlib.sha256(packages.build(code)).hexdigest()
    unreadable = [state, config.resolve(), *(packages.folder_for(settings.data_dir.resolve(), name, digest, "")
                                             / "code" / "app.py" for name in ("peek", "peek2"))]
    for name in ("peek", "peek2"):
        deploy(config, code, name, "app.handler", "--env", f"SECRET_HASHES={','.join(hashes)}",
               "--env", f"READ_TRIES={','.join(map(str, unreadable))},/etc/passwd,/proc/meminfo")
    monkeypatch.setenv("FILEPROC_TEST_SECRET", "the worker's, not the function's")
    service = service_for(config)
    held = {os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
            if os.path.exists(f"/proc/self/fd/{fd}")}
    assert f"{state}-shm" in held or str(state) in held  # the worker has them open: a fork would inherit them
    pool().close()  # no interpreter started ahead: the first runner starts at once, the second takes one

    pids = set()
    for bucket, name in (("inbox", "peek"), ("second", "peek2")):
        done = run(service, upload(service, "a.txt", bucket=bucket))
        assert done.status == "succeeded", done.attempts
        assert done.attempts[0].cold_start is True
        seen = done.attempts[0].result["reachable"]
        pids.add(done.attempts[0].result["pid"])
        targets = sorted(seen["descriptors"].values())
        # stdin is /dev/null; stdout and stderr are the memory file the worker made for invocations'
        # output (the runner keeps a descriptor of its own to it); one socket (its channel to the worker),
        # the listing's own folder, the runner's own memory figures (its /proc status and clear_refs, kept
        # open): nothing else.
        assert seen["descriptors"]["1"].startswith("/memfd:fileproc-invocation-output"), seen["descriptors"]
        assert len([t for t in targets if t.startswith("socket:")]) == 1, seen["descriptors"]
        own = {f"/proc/{done.attempts[0].result['pid']}/{name}" for name in ("fd", "status", "clear_refs")}
        others = [t for t in targets if not t.startswith(("socket:", "/dev/null", "/memfd:fileproc-invocation-output"))
                  and t not in own]
        assert others == [], seen["descriptors"]
        assert not [t for t in targets if str(state) in t or str(settings.data_dir.resolve()) in t]
        # It was started with an empty environment (Lambda's came with its setup), whatever the worker's held.
        assert seen["initial_environment"] == []
        # Nor can it look into the worker's environment, memory or open files through /proc, nor read
        # fileproc's files (Landlock): what else the system holds stays readable.
        functions = (settings.data_dir / "functions").resolve()
        (own,) = [path for path in seen["worker"] if path.startswith(f"{functions}/{name}/")]
        assert seen["worker"].pop(own) == "read"  # its own code it reads, and what the system holds
        assert seen["worker"].pop("/etc/passwd") == seen["worker"].pop("/proc/meminfo") == "read"
        # Another function's code, fileproc's state and config, the worker's /proc: refused (Landlock), or not
        # even there (fileproc as root: the runner's mount namespace holds nothing of data_dir but its own
        # folders, so the probe's glob finds no such file to try).
        assert set(seen["worker"].values()) <= {"PermissionError", "FileNotFoundError"}, seen["worker"]
        assert len(seen["worker"]) == (3 if isolation.switches_users() else 6), seen["worker"]
        # None of the worker's secrets, settings, database or broker objects in its memory.
        assert [hashes[found] for found in seen["secrets"]] == []
        assert seen["objects"] == []
        loaded = set(seen["modules"])
        for module in ("fileproc.config", "fileproc.service", "fileproc.state", "fileproc.runtime.app",
                       "sqlalchemy", "celery", "kombu", "pydantic", "fastapi"):
            assert module not in loaded, f"{module} is loaded in the function's runner"
    assert len(pids) == 2  # a runner of its own for each function


def test_deploy_rollback_and_pinned_versions_reach_a_running_worker(tmp_path: Path) -> None:
    code = tmp_path / "probe"
    shutil.copytree(SAMPLES / "probe", code)
    config = make_config(tmp_path, [{"function": "peek"}], extra=[
        {"name": "pinned", "match": {"bucket": "pinned"}, "steps": [{"function": "peek:1"}],
         "output": {"bucket": "out", "key": "{key}/{name}"}}])
    deploy(config, code, "peek", "app.handler")
    service = service_for(config)  # the "worker": running from here on, never restarted

    def code_of(job: Job) -> tuple[str, str | None]:
        done = run(service, job)
        assert done.status == "succeeded", done.attempts
        return done.attempts[-1].result["code"], done.attempts[-1].version

    assert code_of(upload(service, "1.txt")) == ("v-one", "1")
    again = run(service, upload(service, "1b.txt"))
    assert again.attempts[0].cold_start is False  # the same warm runner: its output starts clean each time
    assert (again.attempts[0].log or "").count("and from a child process\n") == 1 and "\0" not in again.attempts[0].log
    app = code / "app.py"
    app.write_text(app.read_text().replace('VERSION = "v-one"', 'VERSION = "v-two"'))
    assert "version 2 (live)" in deploy(config, code, "peek", "app.handler")
    assert code_of(upload(service, "2.txt")) == ("v-two", "2")
    assert code_of(upload(service, "p.txt", bucket="pinned")) == ("v-one", "1")  # probe:1 stays on 1
    assert "live is now version 1" in fileproc(config, "functions", "rollback", "peek", "1")
    assert code_of(upload(service, "3.txt")) == ("v-one", "1")

    versions = fileproc(config, "functions", "versions", "peek")
    assert re.search(r"^v1 .*\[live\]$", versions, re.M) and re.search(r"^v2 (?!.*live)", versions, re.M)
    (listed,) = json.loads(fileproc(config, "functions", "list", "--json"))
    assert listed["function"] == "peek" and listed["version"] == 1 and listed["versions"] == 2

    # Usage, checked against the attempts recorded: GB-seconds = billed seconds x configured GB, summed.
    attempts = [a for job in service.db.list_jobs() for a in job.attempts]
    assert len(attempts) == 5 and all(a.billed_ms and a.memory_mb == 128 for a in attempts)
    (usage,) = json.loads(fileproc(config, "usage", "--json"))  # one array (README, CLI conventions)
    billed = sum(a.billed_ms or 0 for a in attempts)
    gb_seconds = sum((a.billed_ms or 0) / 1000 * 128 / 1024 for a in attempts)
    assert usage["function"] == "peek" and usage["requests"] == 5 and usage["billed_ms"] == billed
    assert usage["gb_seconds"] == pytest.approx(gb_seconds)
    assert usage["cost"] == pytest.approx(5 * 0.0000002 + gb_seconds * 0.0000166667)
    assert usage["cold_starts"] == sum(1 for a in attempts if a.cold_start) >= 2  # one runner per version
    by_pipeline = {group["pipeline"]: group["requests"]
                   for group in json.loads(fileproc(config, "usage", "--json", "--by", "pipeline"))}
    assert by_pipeline == {"p": 4, "pinned": 1}
    (today,) = json.loads(fileproc(config, "usage", "--by", "day", "--since", "1d", "--json"))
    assert today["day"] == attempts[0].started_at.strftime("%Y-%m-%d") and today["requests"] == 5
    assert fileproc(config, "usage", "--since", "2999-01-01").strip() == "nothing ran"
    table = fileproc(config, "usage", "--pipeline", "pinned")
    assert re.search(r"^peek\s+1\s+0\s+0\s", table, re.M), table  # 1 request, on v1's warm runner, no error

    queued = upload(service, "4.txt")
    assert "deleted peek (2 versions)" in fileproc(config, "functions", "delete", "peek")
    assert "no deployed functions" in fileproc(config, "functions", "list")
    failed = run(service, queued)  # queued before the delete: it fails, saying why
    assert failed.status == "failed" and "no function named 'peek'" in (failed.error or "")


def test_errors_and_return_values_are_recorded_as_lambda_reports_them(tmp_path: Path) -> None:
    code = tmp_path / "probe"
    shutil.copytree(SAMPLES / "probe", code)
    config = make_config(tmp_path, [{"function": "peek"}])
    deploy(config, code, "peek", "app.handler", "--env", "MODE=fail", "--retries", "0")
    service = service_for(config)

    failed = run(service, upload(service, "a.txt"))
    assert failed.status == "failed" and "asked to fail" in (failed.error or "")
    (attempt,) = failed.attempts
    assert attempt.result["errorType"] == "ValueError" and attempt.result["errorMessage"] == "asked to fail"
    assert attempt.result["requestId"].startswith(f"{failed.id}-0-") and attempt.result["stackTrace"]
    assert 'raise ValueError("asked to fail")' in (attempt.traceback or "")
    assert '"errorType": "ValueError"' in (attempt.log or "")

    deploy(config, code, "peek", "app.handler", "--env", "MODE=unmarshalable", "--retries", "0")
    odd = run(service, upload(service, "b.txt"))
    assert odd.status == "failed" and odd.attempts[0].result["errorType"] == "Runtime.MarshalError"

    missing = tmp_path / "nothing_here.py"
    missing.write_text("x = 1\n")
    deploy(config, missing, "peek", "nothing_here.handler", "--retries", "0")
    gone = run(service, upload(service, "c.txt"))
    assert gone.status == "failed" and gone.attempts[0].result["errorType"] == "Runtime.HandlerNotFound"


def test_the_aws_context_sample_runs_unchanged_and_its_log_is_kept(tmp_path: Path) -> None:
    config = make_config(tmp_path, [{"function": "ctx"}])
    deploy(config, SAMPLES / "context_sample.py", "ctx", "context_sample.lambda_handler", "--timeout", "10")
    service = service_for(config)
    done = run(service, upload(service, "a.txt"))
    assert done.status == "succeeded", done.attempts
    log = fileproc(config, "logs", "ctx")
    assert "Lambda function ARN: arn:aws:lambda:us-east-1:000000000000:function:ctx\n" in log
    assert re.search(r"CloudWatch log stream name: \d{4}/\d\d/\d\d/\[1\][0-9a-f]{32}\n", log)
    assert "CloudWatch log group name: /aws/lambda/ctx\n" in log
    assert f"Lambda Request ID: {done.id}-0-{done.attempts[0].id}\n" in log
    assert "Lambda function memory limits in MB: 128\n" in log
    remaining = int(re.search(r"Lambda time remaining in MS: (\d+)\n", log).group(1))  # type: ignore[union-attr]
    assert 0 < remaining <= 9_000  # 10 s, less the second it slept


def test_functions_new_scaffolds_a_handler_that_deploys_and_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                 ) -> None:
    config = make_config(tmp_path, [{"function": "hello"}])
    monkeypatch.chdir(tmp_path)
    fileproc(config, "functions", "new", "hello")
    event = json.loads((tmp_path / "hello" / "event.json").read_text())
    assert event["Records"][0]["s3"]["object"]["key"] == "photos/my+cat.jpg"
    deploy(config, tmp_path / "hello", "hello", "lambda_function.lambda_handler", "--env", "SIZE=64")
    service = service_for(config)
    photo = image_bytes(300, 200)
    done = run(service, upload(service, "my file.jpg", photo))
    assert done.status == "succeeded", done.attempts
    (output,) = done.outputs  # the scaffold resizes, through context.output
    assert done.attempts[0].result == {"bucket": output.bucket, "key": output.key, "size": output.size}
    assert output.key.endswith("my file-64.jpg")
    with Image.open(service.storage.open(output.bucket, output.key)) as made:
        assert made.size == (64, 43)
    assert "\tresized s3://inbox/my file.jpg to " in (done.attempts[0].log or "")
    printed = fileproc(config, "invoke", "hello", "--bucket", "inbox", "--key", "my file.jpg")
    # Under functions.bucket's invocations/, where no pipeline looks (not beside the object).
    assert '"key": "invocations/hello/my file.jpg/my file-64.jpg"' in printed and "REPORT RequestId: invoke-" in printed
    event = tmp_path / "event.json"
    event.write_text(json.dumps({"Records": [{"s3": {"bucket": {"name": "inbox"}, "object": {"key": "my+file.jpg"}}}]}))
    assert "my file.jpg" in fileproc(config, "invoke", "hello", "--event", str(event))
    assert json.loads(fileproc(config, "functions", "show", "hello"))["handler"] == "lambda_function.lambda_handler"

    follow = Process(config, ["logs", "hello", "--follow"], tmp_path / "follow.log")
    try:
        wait_for(lambda: "my file.jpg" in follow.log.read_text(), 30, "the logged invocation", follow)
        later = run(service, upload(service, "later.jpg", photo))
        request_id = f"{later.id}-0-{later.attempts[0].id}"
        wait_for(lambda: f"END RequestId: {request_id}" in follow.log.read_text(), 30, "the new invocation", follow)
    finally:
        follow.stop()
