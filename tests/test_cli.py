"""The CLI: documented, every command's help ends with an example, and the small commands work."""

from __future__ import annotations

import json
import re
from pathlib import Path

import click
import pytest

from fileproc import dispatch
from fileproc.app import build
from fileproc.cli import cli
from fileproc.config import load_settings, setting_names
from fileproc.events import ObjectEvent
from tests.procs import fileproc as run

README = (Path(__file__).parent.parent / "README.md").read_text()


@pytest.mark.parametrize("name", sorted(cli.commands))
def test_every_command_is_documented_with_an_example(name: str) -> None:
    command = cli.commands[name]
    assert f"fileproc {name}" in README, f"README does not describe `fileproc {name}`"
    help_text = command.help or ""
    assert "Example:" in help_text and "fileproc" in help_text.split("Example:")[1]


@pytest.mark.parametrize(("dotted", "env"), [(d, e) for d, e, _ in setting_names()])
def test_every_setting_is_documented(dotted: str, env: str) -> None:
    assert f"`{dotted}`" in README and f"`{env}`" in README


def test_init_writes_a_valid_commented_config(tmp_path: Path) -> None:
    target = tmp_path / "fileproc.toml"
    run(None, "init", str(target))
    text = target.read_text()
    assert text.count("#") > 10 and "[[pipelines]]" in text
    out = run(target, "match", "uploads/a/b.JPG", env={"FILEPROC_DATA_DIR": str(tmp_path / "d")}).stdout
    assert out.splitlines()[0] == "thumbnails:"
    assert "thumbnail" in out and "derived/thumbnails/a/b.JPG/NAME" in out
    again = run(None, "init", str(target), check=False)
    assert again.returncode == 1 and "exists" in again.stderr


def test_match_says_when_nothing_matches(tmp_path: Path) -> None:
    env = {"FILEPROC_DATA_DIR": str(tmp_path)}
    notes = run(None, "match", "uploads/notes.txt", env=env).stdout
    assert "no pipeline matches" in notes and "thumbnails: match.suffix: 'notes.txt' does not end with .jpg" in notes
    assert "no pipeline matches" in run(None, "match", "uploads/folder/", env=env).stdout


def test_jobs_json_is_an_array_and_doctor_reports_the_missing_broker(tmp_path: Path) -> None:
    env = {"FILEPROC_DATA_DIR": str(tmp_path)}
    assert json.loads(run(None, "jobs", "--json", env=env).stdout) == []
    doctor = run(None, "doctor", env=env, check=False)
    assert doctor.returncode == 1
    assert re.search(r"\[ok \] storage: local", doctor.stdout)
    assert re.search(r"\[ok \] database: sqlite", doctor.stdout)
    assert "[ERR] broker: cannot reach the embedded broker (it runs only while `fileproc serve` does)" \
        in doctor.stdout


def test_put_rejects_a_target_without_a_key(tmp_path: Path) -> None:
    source = tmp_path / "a.txt"
    source.write_text("x")
    result = run(None, "put", str(source), "justabucket", check=False, env={"FILEPROC_DATA_DIR": str(tmp_path)})
    assert result.returncode == 2 and "is not BUCKET/KEY" in result.stderr


def test_a_key_with_a_newline_is_one_line_in_each_listing_and_exact_in_json(tmp_path: Path) -> None:
    env = {"FILEPROC_DATA_DIR": str(tmp_path)}
    key = "evil\n     9  succeeded  thumbnails        uploads/fake\x1b[31m.jpg"  # a line of its own, and colour
    service = build(load_settings(None, env=env))
    service.prepare_buckets()
    info = service.storage.put("uploads", key, b"x")
    (item,) = dispatch.submit(service, ObjectEvent("uploads", key, size=info.size, etag=info.etag), send=False)
    shown = r"evil\n     9  succeeded  thumbnails        uploads/fake\x1b[31m.jpg"

    assert run(None, "jobs", env=env).stdout == f"{item.job.id:>6}  queued     thumbnails        uploads/{shown}\n"
    assert json.loads(run(None, "jobs", "--json", env=env).stdout)[0]["key"] == key
    for command in (["job", str(item.job.id)], ["why", f"uploads/{key}"], ["match", f"uploads/{key}"]):
        out = run(None, *command, env=env).stdout
        assert shown in out and "\n     9  succeeded" not in out and "\x1b" not in out, (command, out)


def test_help_runs() -> None:
    assert isinstance(cli, click.Group)
    assert "fileproc serve" in run(None, "--help").stdout
