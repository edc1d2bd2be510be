"""One CLI convention, over every command of the tree (README, *CLI conventions*).

The command tree is walked, not listed: a new command must be classified
below (an action, or a list or show command with sample arguments), and a
list or show command must take ``--json``. Then each runs, on an empty
embedded default with no serve running: a list prints one JSON array, ``[]``
here; a show prints one JSON object; asking for something that does not
exist exits 1 with the reason on stderr and nothing on stdout.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest

from fileproc.app import build
from fileproc.cli import cli
from fileproc.config import DEMO_PIPELINE, load_settings
from fileproc.search.indexer import Indexer
from tests.helpers import image_bytes
from tests.procs import fileproc, write_config

ACTIONS = {
    "serve", "api", "worker", "init", "put", "retry", "backfill", "invoke",
    "functions new", "functions deploy", "functions update-config", "functions rollback", "functions delete",
    "functions token", "streams put", "streams reset", "schedules run",
}
"""Commands that do something rather than list or show: no --json asked of them."""

EMPTY, MISSING, OBJECT, ARRAY = "[] (an empty list)", "exit 1 (not found)", "a JSON object", "a JSON array"
SAMPLES: dict[str, tuple[list[str], str, int]] = {
    # command: (arguments, what it prints on an empty setup, exit status)
    "jobs": ([], EMPTY, 0),
    "job": (["999"], MISSING, 1),
    "match": (["uploads/a.jpg"], EMPTY, 0),  # no pipeline in this config
    "why": (["uploads/a.jpg"], OBJECT, 0),
    "doctor": ([], ARRAY, 1),  # the embedded broker runs only with serve: a problem, said in the array too
    "reconcile": (["--history"], EMPTY, 0),
    "reindex": (["--check"], OBJECT, 0),
    "search": (["anything"], EMPTY, 0),
    "usage": ([], EMPTY, 0),
    "logs": (["thumbnail"], EMPTY, 0),  # a function fileproc knows, that never ran
    "logs-summary": (["logs/"], OBJECT, 0),
    "functions list": ([], EMPTY, 0),
    "functions show": (["nope"], MISSING, 1),
    "functions versions": (["nope"], MISSING, 1),
    "functions dead-letters": ([], EMPTY, 0),
    "functions deliveries": ([], EMPTY, 0),
    "functions url": (["nope"], MISSING, 1),
    "streams list": ([], EMPTY, 0),
    "streams status": ([], EMPTY, 0),
    "streams dead-letters": ([], EMPTY, 0),
    "schedules list": ([], EMPTY, 0),
}


def commands(group: click.Group = cli, prefix: str = "") -> Iterator[tuple[str, click.Command]]:
    """Every command of the tree, by its full name (``functions show``)."""
    for name, command in sorted(group.commands.items()):
        full = f"{prefix}{name}"
        if isinstance(command, click.Group):
            yield from commands(command, f"{full} ")
        else:
            yield full, command


ALL = dict(commands())


def takes_json(command: click.Command) -> bool:
    return any("--json" in getattr(param, "opts", []) for param in command.params)


@pytest.fixture(scope="module")
def empty(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A config with no pipeline, on a fresh data folder (nothing running)."""
    folder = tmp_path_factory.mktemp("empty")
    return write_config(folder / "fileproc.toml", {"data_dir": str(folder / "data"), "pipelines": []})


@pytest.mark.parametrize("name", sorted(ALL))
def test_every_command_is_classified_and_every_list_or_show_takes_json(name: str) -> None:
    if name in ACTIONS:
        return
    assert name in SAMPLES, f"`fileproc {name}`: add it to ACTIONS, or to SAMPLES with its arguments"
    assert takes_json(ALL[name]), f"`fileproc {name}` lists or shows: it must take --json"


def test_the_classification_names_only_commands_that_exist() -> None:
    assert (set(SAMPLES) | ACTIONS) - set(ALL) == set()


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_json_parses_empty_lists_are_arrays_and_exit_statuses_are_documented(name: str, empty: Path) -> None:
    args, expected, status = SAMPLES[name]
    done = fileproc(empty, *name.split(), *args, "--json", check=False, timeout=120)
    assert done.returncode == status, (expected, done.stdout, done.stderr)
    if expected == MISSING:
        assert done.stdout == "" and done.stderr.strip(), done
        return
    printed: Any = json.loads(done.stdout)
    if expected == EMPTY:
        assert printed == [], done.stdout
    elif expected == ARRAY:
        assert isinstance(printed, list) and printed, done.stdout
    else:
        assert isinstance(printed, dict), done.stdout


def test_a_deployed_function_is_shown_listed_and_its_versions_too(tmp_path: Path) -> None:
    config = write_config(tmp_path / "f.toml", {"data_dir": str(tmp_path / "data"), "pipelines": []})
    fileproc(None, "functions", "new", "shrink", cwd=tmp_path)
    fileproc(config, "functions", "deploy", str(tmp_path / "shrink"), "--name", "shrink",
             "--handler", "lambda_function.lambda_handler")
    assert json.loads(fileproc(config, "functions", "show", "shrink", "--json").stdout)["version"] == 1
    assert json.loads(fileproc(config, "functions", "show", "shrink").stdout)["version"] == 1  # JSON either way
    assert [v["version"] for v in json.loads(fileproc(config, "functions", "versions", "shrink", "--json").stdout)] \
        == [1]
    assert [f["function"] for f in json.loads(fileproc(config, "functions", "list", "--json").stdout)] == ["shrink"]
    assert json.loads(fileproc(config, "logs", "shrink", "--json").stdout) == []  # deployed, never run
    # An unknown function's message names the deployed ones too.
    missing = fileproc(config, "invoke", "shrinkk", "--bucket", "uploads", "--key", "a.jpg", check=False)
    assert missing.returncode == 1 and "deployed: shrink" in missing.stderr, missing.stderr


def test_why_exits_non_zero_when_storage_cannot_be_asked(tmp_path: Path) -> None:
    config = write_config(tmp_path / "f.toml", {
        "data_dir": str(tmp_path / "data"),
        "storage": {"backend": "s3", "endpoint": "127.0.0.1:9", "secure": False, "access_key": "k",
                    "secret_key": "s"}})
    done = fileproc(config, "why", "uploads/a.jpg", "--json", check=False, timeout=120)
    assert done.returncode == 1, done
    assert json.loads(done.stdout)["storage_error"]  # the half it knows, then the reason it is only half
    assert "cannot look at the object in storage" in done.stderr


def test_put_refuses_a_bucket_that_does_not_exist_unless_told(tmp_path: Path) -> None:
    config = write_config(tmp_path / "f.toml", {"data_dir": str(tmp_path / "data"), "pipelines": [DEMO_PIPELINE]})
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(image_bytes())
    # `uploads`, watched by the demo pipeline, is made as serve would make it; a typo of it is refused.
    assert "job 1: thumbnails (queued)" in fileproc(config, "put", str(photo), "uploads/photo.jpg").stdout
    typo = fileproc(config, "put", str(photo), "uplaods/photo.jpg", check=False)
    assert typo.returncode == 1 and "no bucket 'uplaods'" in typo.stderr and "--create-bucket" in typo.stderr
    assert not (tmp_path / "data" / "buckets" / "uplaods").exists()
    made = fileproc(config, "put", "--create-bucket", str(photo), "uplaods/photo.jpg")
    assert "uploaded uplaods/photo.jpg" in made.stdout


def test_put_says_at_once_when_nothing_will_run_its_jobs(tmp_path: Path) -> None:
    config = write_config(tmp_path / "f.toml", {"data_dir": str(tmp_path / "data"), "pipelines": [DEMO_PIPELINE]})
    build(load_settings(config, env={})).prepare_buckets()  # `uploads`, as serve would make it
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(image_bytes())
    queued = fileproc(config, "put", str(photo), "uploads/a.jpg")
    assert "job 1: thumbnails (queued)" in queued.stdout
    assert "the broker does not answer" in queued.stderr and "the jobs stay queued" in queued.stderr
    assert "one by one" not in queued.stderr  # no send tried (and retried for seconds): the outbox's log line
    waited = fileproc(config, "put", "--wait", str(photo), "uploads/b.jpg", check=False)
    assert waited.returncode == 1 and "cannot finish while nothing runs them" in waited.stderr


def test_reindex_names_the_indexer_holding_the_index_instead_of_waiting(tmp_path: Path) -> None:
    config = write_config(tmp_path / "f.toml", {"data_dir": str(tmp_path / "data"), "pipelines": []})
    holder = Indexer(build(load_settings(config, env={})))
    assert holder.acquire()  # as the indexer of a running serve holds it
    try:
        check = fileproc(config, "reindex", "--check", "--json", timeout=60)
        assert json.loads(check.stdout)["indexed"] == 0
        assert "being written by a running fileproc" in check.stderr
        rebuild = fileproc(config, "reindex", check=False, timeout=60)
        assert rebuild.returncode == 1 and "stop it first" in rebuild.stderr
    finally:
        holder.release()
    assert "rebuilt the index: 0 document(s)" in fileproc(config, "reindex", timeout=60).stdout


def test_log_lines_do_not_break_a_progress_bar(tmp_path: Path) -> None:
    """Under a terminal (a pty), backfill's bar is not interleaved with one INFO line per job."""
    import fcntl
    import os
    import pty
    import struct
    import sys
    import termios

    config = write_config(tmp_path / "f.toml", {"data_dir": str(tmp_path / "data"), "pipelines": [DEMO_PIPELINE]})
    uploads = tmp_path / "data" / "buckets" / "uploads"
    uploads.mkdir(parents=True)
    for number in range(5):
        (uploads / f"{number}.jpg").write_bytes(image_bytes())
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a new pty is 0 columns wide
    done = subprocess.run([sys.executable, "-m", "fileproc", "--config", str(config), "backfill", "uploads"],
                          stdin=secondary, stdout=subprocess.PIPE, stderr=secondary, timeout=120)
    os.close(secondary)
    shown = b""
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    os.close(primary)
    assert done.returncode == 0, shown
    assert b"listed 5, matched 5: 5 queued" in done.stdout
    text = shown.decode(errors="replace")
    assert "objects" in text  # the bar
    assert "INFO" not in text, text  # "job N: thumbnails on uploads/N.jpg", one per job, held back
