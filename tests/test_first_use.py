"""What a first-time user tripped on, each kept fixed.

The README's "try it" block pasted into a shell, a port already in use, how
long serve takes to stop, how fast the CLI answers, `init`, `doctor`, `put`
and what a worker prints.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from fileproc.app import build
from fileproc.config import load_settings
from fileproc.runtime.runner import run_step
from tests.helpers import image_bytes
from tests.procs import Process, fileproc, free_port, wait_for, wait_healthy
from tests.servers import require

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()

WORKER_READY = re.compile(r"@\S+ ready\.")

def try_it_block() -> str:
    """The first ``sh`` block after "Try it" in the README."""
    after = README[README.index("Try it"):]
    match = re.search(r"```sh\n(.*?)```", after, re.S)
    assert match is not None
    return match.group(1)


def fake_clone(where: Path) -> Path:
    """A folder laid out like a fresh clone whose ``.venv`` is already installed.

    ``make`` sees ``.venv/bin/fileproc`` newer than ``pyproject.toml`` and
    installs nothing; the scripts run this test's Python.
    """
    where.mkdir()
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, where / name)
    bin_dir = where / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name, command in (("fileproc", f'{sys.executable} -m fileproc'), ("python", sys.executable)):
        script = bin_dir / name
        script.write_text(f'#!/bin/sh\nexec {command} "$@"\n')
        script.chmod(0o755)
    return where


def stop_group(pgid: int, timeout: float = 30) -> None:
    """SIGTERM a process group (as Ctrl-C would reach it), then wait until it is gone."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def test_the_readme_try_it_block_works_when_pasted(tmp_path: Path) -> None:
    require("make")  # skipped without them on a developer's machine, a failure under CI
    require("curl")
    clone = fake_clone(tmp_path / "clone")
    port = free_port()
    block = try_it_block().replace("8080", str(port))
    env = {**os.environ, "FILEPROC_API_PORT": str(port)}
    env.pop("VIRTUAL_ENV", None)  # the Makefile would use an active virtualenv instead of .venv
    log = tmp_path / "shell.log"
    with log.open("wb") as out:  # a file, not a pipe: serve, left running in the background, keeps it open
        shell = subprocess.Popen(["bash", "-e", "-c", block], cwd=clone, env=env, start_new_session=True,
                                 stdout=out, stderr=subprocess.STDOUT)
    try:
        shell.wait(timeout=180)
    finally:
        stop_group(shell.pid)
    output = log.read_text(errors="replace")
    assert shell.returncode == 0, output
    assert re.search(r"job \d+: thumbnails succeeded: derived/thumbnails/trip/photo.jpg/thumb-256.webp", output)
    assert re.search(r"^thumb-256\.webp$", output, re.M), output  # what `ls` printed


def test_a_port_in_use_is_said_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = fileproc(None, "serve", "--port", str(port), check=False, cwd=tmp_path)
    assert result.returncode == 1
    assert f"error: cannot listen on 127.0.0.1:{port}: Address already in use" in result.stderr
    assert "serving on" not in result.stderr + result.stdout
    assert not (tmp_path / "fileproc-data" / "broker").exists()  # the broker never started


def test_serve_stops_quickly_when_idle(tmp_path: Path) -> None:
    port = free_port()
    serve = Process(None, ["serve", "--port", str(port)], tmp_path / "serve.log", cwd=tmp_path)
    try:
        wait_healthy(port, serve, timeout=60)
        # Celery's "fileproc-<pid>@<host> ready." (not the embedded broker's "ready on").
        wait_for(lambda: WORKER_READY.search(serve.log.read_text(errors="replace")), 60, "the worker", serve)
        started = time.monotonic()
        assert serve.stop(timeout=30) == 0
        took = time.monotonic() - started
    finally:
        serve.stop()
    # It took 6-8 s: redis-py's retries with backoff on the broker's SHUTDOWN, then the
    # final garbage collections of every imported module. Celery's warm shutdown remains.
    assert took < 5, f"serve took {took:.1f} s to stop:\n{serve.tail()}"


def test_a_first_serve_sends_the_first_file_itself(tmp_path: Path) -> None:
    """On a data folder no serve has used, the embedded broker's password is made as it starts.

    serve's own sends (the folder watcher's, the webhook's) must use it: they went
    without it, failed, and waited for the worker's relay (about 2 s a file, and a
    "stay queued until the broker is back" warning for each).
    """
    port = free_port()
    serve = Process(None, ["serve", "--port", str(port)], tmp_path / "serve.log", cwd=tmp_path)
    try:
        wait_healthy(port, serve, timeout=60)
        wait_for(lambda: WORKER_READY.search(serve.log.read_text(errors="replace")), 60, "the worker", serve)
        uploads = tmp_path / "fileproc-data" / "buckets" / "uploads"
        (tmp_path / "cat.jpg").write_bytes(image_bytes())
        os.replace(tmp_path / "cat.jpg", uploads / "cat.jpg")  # dropped in whole, as a user's mv does
        thumbnail = tmp_path / "fileproc-data" / "buckets" / "derived" / "thumbnails" / "cat.jpg" / "thumb-256.webp"
        wait_for(thumbnail.exists, 60, "the thumbnail", serve)
    finally:
        serve.stop()
    log = serve.log.read_text(errors="replace")
    assert "until the broker is back" not in log and "relayed" not in log, log


def test_the_cli_imports_nothing_heavy_to_start() -> None:
    code = ("import sys, fileproc.cli; "
            "print(sorted(m for m in ('celery', 'sqlalchemy', 'fastapi', 'pydantic', 'uvicorn', 'PIL', 'yaml') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    version = fileproc(None, "--version")
    assert version.stdout.strip() == "fileproc, version 0.1.0"


def test_doctor_creates_nothing(tmp_path: Path) -> None:
    result = fileproc(None, "doctor", cwd=tmp_path, check=False)
    assert "[ok ] database: sqlite at" in result.stdout and "(created on first start)" in result.stdout
    built_ins = sorted(point.name for point in entry_points(group="fileproc.functions"))
    assert f"[ok ] functions: {len(built_ins)} registered ({', '.join(built_ins)})" in result.stdout
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["x.yaml", "x.yml", "sub/deeper/x.toml"])
def test_init_writes_the_format_its_name_says_where_asked(tmp_path: Path, name: str) -> None:
    result = fileproc(None, "init", name, cwd=tmp_path)
    assert result.stdout == f"wrote {name}\n"
    text = (tmp_path / name).read_text()
    assert ("[[pipelines]]" in text) == name.endswith(".toml")
    assert load_settings(tmp_path / name, env={}).pipelines[0].name == "thumbnails"


def test_init_says_why_it_cannot_write(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    result = fileproc(None, "init", "file/x.toml", cwd=tmp_path, check=False)
    assert result.returncode == 1 and result.stderr.startswith("Error: cannot write file/x.toml")


def test_the_starter_config_makes_what_the_demo_makes(tmp_path: Path) -> None:
    demo = load_settings(env={})
    for name in ("a.toml", "b.yaml"):
        fileproc(None, "init", name, cwd=tmp_path)
        starter = load_settings(tmp_path / name, env={})
        assert starter.pipelines == demo.pipelines
        assert starter.model_dump(exclude={"config_file", "pipelines"}) == \
            load_settings(tmp_path / "a.toml", env={}).model_dump(exclude={"config_file", "pipelines"})


def test_put_says_when_the_file_was_already_processed(tmp_path: Path) -> None:
    env = {"FILEPROC_DATA_DIR": str(tmp_path / "data"), "FILEPROC_BROKER_URL": "redis://127.0.0.1:1/0"}
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(image_bytes())
    first = fileproc(None, "put", str(photo), "uploads/photo.jpg", env=env).stdout
    assert "job 1: thumbnails (queued)" in first
    again = fileproc(None, "put", str(photo), "uploads/photo.jpg", env=env).stdout
    assert "already under way as job 1 (queued): thumbnails" in again
    service = build(load_settings(env=env))
    service.prepare_buckets()  # as a worker does at start
    assert run_step(service, 1, 0, "test").status == "succeeded"
    done = fileproc(None, "put", str(photo), "uploads/photo.jpg", env=env).stdout
    assert "already processed by job 1 (succeeded): thumbnails" in done
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert "no pipeline matches it" in fileproc(None, "put", str(text), "uploads/notes.txt", env=env).stdout


@pytest.mark.services
def test_a_worker_prints_no_banner_and_no_task_ids(tmp_path: Path, redis_url: str) -> None:
    script = tmp_path / "worker.py"
    script.write_text(
        "from fileproc.config import load_settings\n"
        "from fileproc.runtime.app import run_worker\n"
        "from fileproc.runtime.tasks import bind_service\n"
        "from fileproc.app import build\n"
        "from fileproc.service import setup_worker_logging\n"
        "settings = load_settings()\n"
        "service = build(settings)\n"
        "service.prepare_buckets()\n"
        "bind_service(service)\n"
        "setup_worker_logging(settings)\n"
        "run_worker('thumbnail', 1, 'INFO', pool_cls='solo')\n")
    env = {**os.environ, "FILEPROC_DATA_DIR": str(tmp_path / "data"), "FILEPROC_BROKER_URL": redis_url,
           "FILEPROC_WORKER_QUEUES": "thumbnail"}
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen([sys.executable, str(script)], stdout=out, stderr=subprocess.STDOUT, env=env,
                                  start_new_session=True)
    try:
        wait_for(lambda: WORKER_READY.search(log.read_text(errors="replace")), 60, "the worker to be ready")
        photo = tmp_path / "photo.jpg"
        photo.write_bytes(image_bytes())
        put = fileproc(None, "put", "--wait", "--timeout", "60", str(photo), "uploads/w/photo.jpg",
                       env={k: v for k, v in env.items() if k.startswith("FILEPROC_")})
        assert "thumbnails succeeded" in put.stdout
    finally:
        stop_group(worker.pid)
    printed = log.read_text(errors="replace")
    assert "[queues]" not in printed and "[tasks]" not in printed  # the banner
    assert "fileproc.run_step[" not in printed  # "Task fileproc.run_step[<uuid>] received / succeeded"
