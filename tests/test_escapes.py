"""The attacker's suite: a hostile deployed function tries each way out of its sandbox that was once open.

Each attack is a deployed handler (tests/lambda_functions/attacker/app.py)
that does its harm plainly; each must be refused or contained, with a
reason on its job, and a tenant's ordinary job must succeed right after.
Run as users run fileproc: the embedded default started from the folder
that holds ``fileproc-data`` and the config file (the README's ``make
serve`` layout: the working folder is on the worker's ``sys.path``), and
the S3 stack (versitygw, a Redis with a password, ``fileproc api`` and
``fileproc worker``).

Other ways in have their own suites: hostile media (test_escapes_media.py),
the HTTP routes (test_escapes_web.py), package tampering and store
credentials (test_scoped_credentials.py).
"""

from __future__ import annotations

import glob
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fileproc.sandbox.isolation import MAX_PROCESSES, switches_users
from fileproc.sandbox.landlock import scopes_signals
from tests.chaos import deployment, sqlite_url
from tests.helpers import image_bytes
from tests.procs import Process, fileproc, jobs, settled, wait_for, wait_healthy, write_config
from tests.servers import free_port

ATTACKER = Path(__file__).parent / "lambda_functions" / "attacker"
ATTACKS = ("read_secret", "plant_link", "broker", "kill_worker", "fill_shm", "fork_loop")


def pipeline(name: str, bucket: str = "uploads") -> dict[str, Any]:
    return {"name": name, "match": {"bucket": bucket, "prefix": f"{name}/"},
            "steps": [{"function": name.replace("_", "-")}], "output": {"bucket": "out", "key": "{key}/{name}"}}


PIPELINES = [pipeline(name) for name in (*ATTACKS, "normal")]
THUMBNAILS = {"name": "thumbs", "match": {"bucket": "uploads", "prefix": "img/"}, "steps": [{"function": "thumbnail"}],
              "output": {"bucket": "out", "key": "{key}/{name}"}}


def deploy_attacker(config: Path, env: dict[str, dict[str, str]], cwd: Path | None = None) -> None:
    for name in (*ATTACKS, "normal"):
        options = [f"--env={key}={value}" for key, value in env.get(name, {}).items()]
        done = fileproc(config, "functions", "deploy", str(ATTACKER), "--name", name.replace("_", "-"),
                        "--handler", f"app.{name}", "--retries", "0", "--timeout", "20", *options, cwd=cwd)
        assert "deployed" in done.stdout, done.stdout + done.stderr


def outcome(job: dict[str, Any]) -> dict[str, Any]:
    (attempt,) = job["attempts"]
    return {"status": job["status"], "error": attempt["error"] or "", "result": attempt["result"] or {},
            "log": attempt["log"] or ""}


def assert_contained(found: dict[str, dict[str, Any]], secrets: list[str], worker_pids: tuple[int, int]) -> None:
    """What every stack must show after the attacks: nothing got out, the worker lives, work goes on."""
    everything = json.dumps(found)
    for secret in secrets:
        assert secret not in everything, f"a secret got out: {secret[:12]}..."
    # Reading fileproc's files: refused (Landlock), or not even there (its own mount namespace as root).
    read = found["read_secret"]
    assert read["status"] == "failed" and ("refused reading" in read["error"] or "No such file" in read["error"]), read
    # The broker: not reachable, or it asks for the password it does not have; never a PONG.
    answer = found["broker"]
    assert "+PONG" not in everything and "+OK" not in answer["result"].get("answer", ""), answer
    assert answer["status"] == "failed" or "NOAUTH" in answer["result"]["answer"], answer
    # Its worker: not killed (Landlock's signal scope, or a user of its own); the same worker ran every job.
    kill = found["kill_worker"]
    assert kill["status"] == "failed" and "Operation not permitted" in kill["error"], kill
    assert worker_pids[0] == worker_pids[1], "the worker was replaced: the attack killed it"
    # /dev/shm: refused, or the runner's own (gone with it): nothing left on the host.
    assert not glob.glob("/dev/shm/fileproc-escape-*"), "a function left its data in the host's /dev/shm"
    # A fork loop stops at the process limit, with EAGAIN, long before the host's pid space.
    forks = found["fork_loop"]
    assert forks["status"] == "succeeded", forks
    assert forks["result"]["stopped"] == "Resource temporarily unavailable", forks
    assert forks["result"]["made"] < MAX_PROCESSES + 200, forks
    # A tenant's job right after: done.
    assert found["normal"]["status"] == "succeeded", found["normal"]


def run_attacks(put: Any, wait: Any, names: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    for name in names:
        put(f"{name}/go.bin", b"attack")
    done = wait(len(names))
    found = {job["key"].split("/")[0]: outcome(job) for job in done}
    assert sorted(found) == sorted(names), found
    return found


# --- the embedded default, from the data folder's parent ---------------------------------------


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[tuple[Path, Process]]:
    """`fileproc serve` started where `make serve` starts it: the folder that holds fileproc-data."""
    config = write_config(tmp_path / "fileproc.toml", {"pipelines": [*PIPELINES, THUMBNAILS]})
    data = tmp_path / "fileproc-data"
    (data / "buckets" / "uploads" / "img").mkdir(parents=True)
    secret_png = data / "secret.png"
    secret_png.write_bytes(image_bytes(64, 64, "red", "PNG"))
    deploy_attacker(config, {
        "read_secret": {"TARGET": str(data / "tokens.json")},
        "plant_link": {"TARGET": str(secret_png), "LINK": str(data / "buckets" / "uploads" / "img" / "planted.png")},
        "broker": {"TARGET": str(data / "broker" / "redis.sock")},
    }, cwd=tmp_path)
    port = free_port()
    server = Process(config, ["serve", "--port", str(port)], tmp_path / "serve.log", cwd=tmp_path)
    try:
        wait_healthy(port, server)
        yield tmp_path, server
    finally:
        assert server.stop() == 0, server.tail()


def worker_of(server: Process) -> int:
    pid = server.popen.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    workers = [int(pid) for pid in children if b"worker" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(workers) == 1, children
    return workers[0]


def test_a_hostile_function_is_contained_on_the_embedded_default(embedded: tuple[Path, Process]) -> None:
    folder, server = embedded
    config = folder / "fileproc.toml"
    buckets = folder / "fileproc-data" / "buckets"
    tokens = json.loads((folder / "fileproc-data" / "tokens.json").read_text())
    secrets = [tokens["admin"], tokens["webhook"], (folder / "fileproc-data" / "broker" / "password").read_text()]
    before = worker_of(server)

    def put(key: str, data: bytes) -> None:
        source = folder / "upload.bin"
        source.write_bytes(data)
        fileproc(config, "put", str(source), f"uploads/{key}", cwd=folder)

    found = run_attacks(put, lambda n: wait_for(settled(config, n, cwd=folder), 90, f"{n} jobs", server),
                        (*ATTACKS, "normal"))
    assert_contained(found, secrets, (before, worker_of(server)))
    # A link planted in a bucket: refused, so no built-in ever reads the hidden file through it.
    link = found["plant_link"]
    assert link["status"] == "failed" and "refused making" in link["error"] and "no links" in link["error"], link
    assert not (buckets / "uploads" / "img" / "planted.png").is_symlink()
    # Nor one planted by other means: not an object (the watcher and the storage follow no link).
    os.symlink(folder / "fileproc-data" / "secret.png", buckets / "uploads" / "img" / "by-hand.png")
    put("img/real.png", image_bytes(64, 64, "blue", "PNG"))
    wait_for(settled(config, len(found) + 1, cwd=folder), 60, "the real picture's job", server)
    time.sleep(1.5)  # (the watcher settles a file for about a second)
    keys = sorted(job["key"] for job in jobs(config, cwd=folder) if job["key"].startswith("img/"))
    assert keys == ["img/real.png"]
    assert not list((buckets / "out" / "img").glob("by-hand.png*"))
    # The broker's data and socket, and the state database, stay fileproc's only where it runs as root.
    if switches_users():
        assert os.stat(folder / "fileproc-data" / "broker").st_mode & 0o077 == 0
        assert os.stat(folder / "fileproc-data" / "state.db").st_mode & 0o007 == 0


# --- the S3 stack ----------------------------------------------------------------------------------


def test_a_hostile_function_is_contained_on_the_s3_stack(tmp_path: Path, redis_url: str) -> None:
    names = ("read_secret", "broker", "kill_worker", "fill_shm", "fork_loop", "normal")
    # versitygw has no STS: the functions share fileproc's store keys here, knowingly (their scoping is
    # test_scoped_credentials.py's, on MinIO); what is tested here is the sandbox around them.
    with deployment(tmp_path, redis_url=redis_url, database_url=sqlite_url(tmp_path), pipelines=[],
                    buckets=["uploads", "out"], functions={"credentials": "shared"}) as d:
        config = d.config
        redis_address = redis_url.rsplit("@", 1)[1].split("/")[0]
        deploy_attacker(config, {"read_secret": {"TARGET": str(config)},  # holds the store's keys and tokens
                                 "broker": {"TARGET": redis_address}})
        write_config(config, {**d.settings, "pipelines": [pipeline(name) for name in names]})
        d.processes[0].stop()
        d.api("api2")
        worker = d.worker(concurrency=1)

        def put(key: str, data: bytes) -> None:
            import io

            d.client.put_object("uploads", key, io.BytesIO(data), len(data))

        found = run_attacks(put, lambda n: d.wait_for(settled(config, n), 90, f"{n} jobs"), names)
        found["plant_link"] = {}
        secrets = [d.settings["api"]["admin_token"],
                   d.settings["api"]["webhook_token"], redis_url.split("@")[0].rsplit(":", 1)[1]]
        assert_contained(found, secrets, (worker.popen.pid, worker.popen.pid if worker.alive() else -1))


def test_what_the_host_allows_is_what_doctor_says() -> None:
    # The suite above holds on this host by these protections; doctor names them (README: Isolation).
    out = fileproc(None, "doctor", check=False).stdout  # (no broker runs here: that check fails)
    assert f"[{'ok ' if scopes_signals() or switches_users() else 'off'}] isolation: signals" in out
    assert f"[{'ok ' if switches_users() else 'off'}] isolation: user" in out
    assert "isolation: processes: at most 1024 processes" in out


FORGED_REPLY = '''
import os, pickle, struct, sys

class Harm:
    def __reduce__(self):  # what the worker would call while unpickling
        return (os.system, (f"touch {os.environ['MARKER']}",))

def forge(event, context):
    sock = int(sys.argv[2])  # the runner's socket to its worker (its argv: module, descriptor, worker's pid)
    data = pickle.dumps({"ok": True, "value": Harm()})
    os.write(sock, struct.pack("!Q", len(data)) + data)
    return {"sent": True}

def fine(event, context):
    return {"fine": True}
'''


def test_a_reply_a_function_forges_on_its_runners_socket_runs_nothing_in_the_worker(tmp_path: Path) -> None:
    from fileproc.runtime.direct import invoke_event
    from tests.test_lambda import deploy, make_config, service_for

    code = tmp_path / "code"
    code.mkdir()
    (code / "app.py").write_text(FORGED_REPLY)
    marker = tmp_path / "worker-ran-this"
    config = make_config(tmp_path, [{"function": "forge"}])
    deploy(config, code, "forge", "app.forge", "--env", f"MARKER={marker}")
    deploy(config, code, "fine", "app.fine")
    service = service_for(config)
    forged = invoke_event(service, "forge", {}, trigger="test", what="forged")
    assert not forged.ok and "not plain data" in (forged.error or {}).get("errorMessage", "")
    assert not marker.exists()  # the worker built nothing the function named
    assert invoke_event(service, "fine", {}, trigger="test", what="after").result == {"fine": True}
