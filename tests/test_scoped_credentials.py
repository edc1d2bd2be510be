"""A deployed function reaches the store only as its own role, and runs only the code that was deployed.

On MinIO (its STS and session policies, for real): a function whose
pipeline reads one bucket and writes another can do exactly that, and is
refused everything else (``functions.bucket``, other functions' packages,
other buckets, deletes), through boto3 and ``context.storage`` alike; its
environment holds none of fileproc's keys; and a warm runner whose
credentials were renewed is replaced. On local folders and on versitygw: a
package zip changed in storage after its deploy is refused by a fresh host,
with a plain reason, before anything of it is unpacked or run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import shutil
import textwrap
import zipfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from minio import Minio

from fileproc.cli import cli
from fileproc.objects import event_for
from fileproc.serverless import credentials, packages
from fileproc.state.deployments import resolve
from tests.procs import write_config
from tests.servers import MinioServer, Versitygw, minio_server, read_from_s3
from tests.test_lambda import deploy, fileproc, make_config, run, service_for, upload

pytestmark = pytest.mark.services

PACKAGES = "fileproc-functions"

ATTACKER = '''
import os

import boto3
from botocore.exceptions import ClientError


def handler(event, context):
    s3 = boto3.client("s3")
    record = event["Records"][0]["s3"]
    source, key = record["bucket"]["name"], record["object"]["key"]
    victim = os.environ["VICTIM_PACKAGE"]
    tried = {}

    def attempt(name, action):
        try:
            action()
            tried[name] = "allowed"
        except ClientError as exc:
            tried[name] = exc.response["Error"]["Code"]
        except Exception as exc:  # context.storage's own errors name the store's code
            tried[name] = "AccessDenied" if "AccessDenied" in str(exc) else f"{type(exc).__name__}: {exc}"

    attempt("read its source", lambda: s3.get_object(Bucket=source, Key=key)["Body"].read())
    attempt("write its outputs", lambda: s3.put_object(Bucket="outbox-b", Key=f"made/{key}/boto3.txt", Body=b"b"))
    attempt("read its source bucket outside its prefix",
            lambda: s3.get_object(Bucket=source, Key="private/secret.txt")["Body"].read())
    attempt("write its output bucket outside its folder",
            lambda: s3.put_object(Bucket="outbox-b", Key="elsewhere.txt", Body=b"x"))
    attempt("delete its source", lambda: s3.delete_object(Bucket=source, Key=key))
    attempt("read another function's package",
            lambda: s3.get_object(Bucket="fileproc-functions", Key=victim)["Body"].read())
    attempt("list functions.bucket", lambda: s3.list_objects_v2(Bucket="fileproc-functions"))
    attempt("overwrite another function's package",
            lambda: s3.put_object(Bucket="fileproc-functions", Key=victim, Body=b"PK evil"))
    attempt("write functions.bucket", lambda: s3.put_object(Bucket="fileproc-functions", Key="x.zip", Body=b"x"))
    attempt("read another bucket", lambda: s3.get_object(Bucket="other-c", Key="private.txt")["Body"].read())
    attempt("write another bucket", lambda: s3.put_object(Bucket="other-c", Key="planted.txt", Body=b"x"))
    attempt("context.storage: overwrite another function's package",
            lambda: context.storage.put("fileproc-functions", victim, b"PK evil"))
    attempt("context.storage: read another bucket", lambda: context.storage.open("other-c", "private.txt").read())
    context.output.put("out.txt", b"made through context.output")
    return {"tried": tried, "env": dict(os.environ)}
'''

WHO = '''
import os


def handler(event, context):
    context.output.put("seen.txt", b"seen")
    return {"key_id": os.environ["AWS_ACCESS_KEY_ID"], "pid": os.getpid(), "read": context.input.open().read().decode()}
'''

REFUSED = ["read its source bucket outside its prefix", "write its output bucket outside its folder",
           "delete its source", "read another function's package", "list functions.bucket",
           "overwrite another function's package", "write functions.bucket", "read another bucket",
           "write another bucket", "context.storage: overwrite another function's package",
           "context.storage: read another bucket"]


@pytest.fixture
def minio() -> Iterator[MinioServer]:
    with minio_server() as server:
        yield server


def handler_folder(tmp_path: Path, name: str, code: str) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "app.py").write_text(textwrap.dedent(code))
    return folder


def s3_config(tmp_path: Path, store: MinioServer | Versitygw, pipelines: list[dict[str, Any]],
              **functions: Any) -> Path:
    tmp_path.mkdir(exist_ok=True)
    settings = {"data_dir": str(tmp_path / "data"), "database": {"url": f"sqlite:///{tmp_path / 'state.db'}"},
                "storage": {"backend": "s3", "endpoint": store.endpoint, "access_key": store.access_key,
                            "secret_key": store.secret_key, "secure": False},
                "functions": {"alias_seconds": 0, **functions}, "pipelines": pipelines}
    return write_config(tmp_path / "fileproc.toml", settings)


def root_client(store: MinioServer | Versitygw, *buckets: str) -> Minio:
    client = Minio(store.endpoint, store.access_key, store.secret_key, secure=False)
    for bucket in buckets:
        client.make_bucket(bucket)
    return client


def test_a_function_reaches_only_what_its_pipelines_read_and_write(tmp_path: Path, minio: MinioServer) -> None:
    client = root_client(minio, "inbox-a", "outbox-b", "other-c")
    client.put_object("inbox-a", "private/secret.txt", io.BytesIO(b"not its"), 7)
    client.put_object("other-c", "private.txt", io.BytesIO(b"not its"), 7)
    config = s3_config(tmp_path, minio, [
        {"name": "attacked", "match": {"bucket": "inbox-a", "prefix": "incoming/"}, "steps": [{"function": "attacker"}],
         "output": {"bucket": "outbox-b", "key": "made/{key}/{name}"}},
        # The victim's pipeline reads other-c: fileproc watches it, the attacker still may not read it.
        {"name": "victims", "match": {"bucket": "other-c"}, "steps": [{"function": "victim"}],
         "output": {"bucket": "outbox-b", "key": "victim/{key}/{name}"}},
    ])
    deploy(config, handler_folder(tmp_path, "victim", WHO), "victim", "app.handler")
    victim = json.loads(fileproc(config, "functions", "show", "victim"))
    deploy(config, handler_folder(tmp_path, "attacker", ATTACKER), "attacker", "app.handler", "--timeout", "30",
           "--env", f"VICTIM_PACKAGE={victim['package_key']}")
    service = service_for(config)

    done = run(service, upload(service, "incoming/photo.txt", b"its own", bucket="inbox-a"))

    assert done.status == "succeeded", done.attempts
    result = done.attempts[-1].result
    tried = result["tried"]
    assert tried["read its source"] == "allowed" and tried["write its outputs"] == "allowed", tried
    assert {name: tried[name] for name in REFUSED} == dict.fromkeys(REFUSED, "AccessDenied")
    assert read_from_s3(client, "outbox-b", "made/incoming/photo.txt/out.txt") == b"made through context.output"
    assert sorted(o.key for o in done.outputs) == ["made/incoming/photo.txt/boto3.txt",
                                                   "made/incoming/photo.txt/out.txt"]
    assert hashlib.sha256(read_from_s3(client, PACKAGES, victim["package_key"])).hexdigest() == victim["package_sha256"]
    # Its environment holds credentials of its own (temporary ones), none of fileproc's.
    env = result["env"]
    assert env["AWS_ACCESS_KEY_ID"] != minio.access_key and env["AWS_SECRET_ACCESS_KEY"] != minio.secret_key
    assert env["AWS_SESSION_TOKEN"]
    assert not [name for name, value in env.items() if minio.access_key in value or minio.secret_key in value]


def test_a_warm_runner_is_replaced_before_its_credentials_could_expire_mid_step(tmp_path: Path,
                                                                                minio: MinioServer) -> None:
    client = root_client(minio, "inbox-a", "outbox-b", "other-c")
    client.put_object("other-c", "named.txt", io.BytesIO(b"named by the invocation"), 23)
    config = s3_config(tmp_path, minio, [{"name": "p", "match": {"bucket": "inbox-a"}, "steps": [{"function": "who"}],
                                          "output": {"bucket": "outbox-b", "key": "{key}/{name}"}}])
    deploy(config, handler_folder(tmp_path, "who", WHO), "who", "app.handler", "--timeout", "20")
    service = service_for(config)

    first = run(service, upload(service, "one.txt", b"one", bucket="inbox-a")).attempts[-1]
    warm = run(service, upload(service, "two.txt", b"two", bucket="inbox-a")).attempts[-1]
    assert (warm.result["pid"], warm.result["key_id"]) == (first.result["pid"], first.result["key_id"])
    assert first.cold_start and not warm.cold_start

    # Its credentials now run out within the step's timeout (20 s) and the margin: a step gets fresh
    # ones, and a new runner to hold them; the old runner is not used again.
    soon = datetime.now(UTC) + timedelta(seconds=30)
    for key, issued in list(credentials._issued.items()):
        credentials._issued[key] = dataclasses.replace(issued, expires=soon)
    renewed = run(service, upload(service, "three.txt", b"three", bucket="inbox-a")).attempts[-1]
    assert renewed.result["key_id"] != first.result["key_id"] and renewed.result["pid"] != first.result["pid"]
    assert renewed.cold_start

    # Invoked on an object no pipeline of it reads: the bucket it names is readable for that run, and
    # its outputs go to functions.bucket's invocations folder (`fileproc invoke` and over HTTP alike), the
    # one place of it a function may write.
    out = fileproc(config, "invoke", "who", "--bucket", "other-c", "--key", "named.txt")
    assert "named by the invocation" in out
    assert read_from_s3(client, service.settings.functions.bucket, "invocations/who/named.txt/seen.txt") == b"seen"
    info = service.storage.head("other-c", "named.txt")
    ((job, _),) = service.db.create_jobs([("_invoke.sync.who.0123456789abcdef",
                                           event_for("other-c", "named.txt", info, source="invoke"))], sending=True)
    direct = run(service, job)
    assert direct.status == "succeeded" and direct.attempts[-1].result["read"] == "named by the invocation", direct
    assert read_from_s3(client, PACKAGES, "invocations/who/named.txt/seen.txt") == b"seen"


def test_doctor_says_which_credentials_functions_get_and_whether_the_store_gives_them(
        tmp_path: Path, minio: MinioServer, versitygw: Callable[..., Versitygw]) -> None:
    def doctor(config: Path) -> str:
        output = CliRunner().invoke(cli, ["--config", str(config), "doctor"]).output
        return next(line for line in output.splitlines() if "function credentials" in line)

    assert doctor(s3_config(tmp_path / "m", minio, [])).startswith("[ok ] function credentials: assume-role")
    gw = versitygw()
    line = doctor(s3_config(tmp_path / "v", gw, []))
    assert line.startswith("[ERR] function credentials: assume-role") and "has no STS" in line, line
    line = doctor(s3_config(tmp_path / "s", gw, [], credentials="shared"))
    assert line.startswith("[ok ] function credentials: shared") and "other functions' code" in line, line


# --- a package changed in storage after its deploy ---------------------------------------------

EVIL = "def handler(event, context):\n    return {'pwned': True}\n"


def evil_zip() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("app.py", EVIL)
    return out.getvalue()


def assert_refused(service: Any, data_dir: Path, bucket: str) -> None:
    version = resolve(service.db, "honest")
    done = run(service, upload(service, "a.txt", b"hello", bucket=bucket))
    assert done.status == "failed", done.attempts
    assert f"the function's package {PACKAGES}/{version.package_key} is not the one deployed" in (done.error or "")
    assert "deploy the function again" in (done.error or "")
    assert not done.attempts[-1].result  # it never ran
    assert not packages.folder_for(data_dir.resolve(), "honest", version.package_sha256, "").exists()
    assert not list((data_dir / "functions" / "honest").glob("*.partial-*"))


def test_a_tampered_package_is_refused_on_a_fresh_host_local_folders(tmp_path: Path) -> None:
    config = make_config(tmp_path, [{"function": "honest"}])
    deploy(config, handler_folder(tmp_path, "honest", WHO), "honest", "app.handler")
    service = service_for(config)
    data_dir = tmp_path / "data"
    version = resolve(service.db, "honest")
    (data_dir / "buckets" / PACKAGES / version.package_key).write_bytes(evil_zip())  # as a function could
    shutil.rmtree(data_dir / "functions")  # a host that has not installed it yet

    assert_refused(service, data_dir, "inbox")


def test_a_tampered_package_is_refused_on_a_fresh_host_versitygw(tmp_path: Path,
                                                                  versitygw: Callable[..., Versitygw]) -> None:
    gw = versitygw()
    client = root_client(gw, "inbox")
    pipelines = [{"name": "p", "match": {"bucket": "inbox"}, "steps": [{"function": "honest"}],
                  "output": {"bucket": "out", "key": "{key}/{name}"}}]
    first = s3_config(tmp_path, gw, pipelines, credentials="shared")
    deploy(first, handler_folder(tmp_path, "honest", WHO), "honest", "app.handler")
    version = resolve(service_for(first).db, "honest")
    client.put_object(PACKAGES, version.package_key, io.BytesIO(evil_zip()), len(evil_zip()))

    fresh = tmp_path / "host2"
    fresh.mkdir()
    config = write_config(fresh / "fileproc.toml", {**_read(first), "data_dir": str(fresh / "data")})
    assert_refused(service_for(config), fresh / "data", "inbox")


def _read(config: Path) -> dict[str, Any]:
    import tomllib

    return tomllib.loads(config.read_text())
