"""Settings: file, environment, defaults, and errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from fileproc.config import load_settings
from fileproc.errors import ConfigError
from tests.procs import fileproc


def test_no_config_means_the_embedded_demo() -> None:
    settings = load_settings(env={})
    assert settings.storage.backend == "local" and settings.embedded_broker
    assert [p.name for p in settings.pipelines] == ["thumbnails"]
    assert settings.database_url.startswith("sqlite:///") and settings.api.host == "127.0.0.1"


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[api]\nport = 9000\n[worker]\nqueues = ["a"]\n')
    settings = load_settings(config, env={"FILEPROC_API_PORT": "9100", "FILEPROC_WORKER_QUEUES": "x, y",
                                          "FILEPROC_STORAGE_SECURE": "false"})
    assert settings.api.port == 9100 and settings.worker.queues == ["x", "y"] and not settings.storage.secure
    assert settings.pipelines == []  # a config file without pipelines has none (no demo)


def test_yaml_works_too(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("pipelines:\n- name: p\n  match: {bucket: b, suffix: .txt}\n"
                      "  steps: [{function: thumbnail}]\n  output: {bucket: o}\n")
    (pipeline,) = load_settings(config, env={}).pipelines
    assert pipeline.match.suffix == [".txt"]


@pytest.mark.parametrize(("text", "field"), [
    ("[api]\nport = 'eighty'\n", "api.port"),
    ("[storage]\nbackend = 'ftp'\n", "storage.backend"),
    ("[storage]\nbakend = 's3'\n", "storage.bakend"),
    ("[storage]\nbackend = 's3'\n", "storage.endpoint"),
    ("[[pipelines]]\nname = 'p'\nsteps = [{function = 'thumbnail'}]\noutput = {bucket = 'o'}\n", "pipelines.0.match"),
    ("[api]\nwebhook_token = 'same'\nadmin_token = 'same'\n", "api.admin_token"),
    ("log_level = 'LOUD'\n", "log_level"),
    ("[[pipelines]]\nname = 'p'\nmatch = {bucket = 'b'}\nsteps = [{params = {}}]\noutput = {bucket = 'o'}\n",
     "pipelines.0.steps.0"),
    ("[[pipelines]]\nname = 'p'\nmatch = {bucket = 'b'}\nsteps = [{handler = 'no colon'}]\noutput = {bucket = 'o'}\n",
     "pipelines.0.steps.0.handler"),
    ("not = [valid", "not valid TOML"),
])
def test_bad_config_names_the_field(tmp_path: Path, text: str, field: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_settings(config, env={})


def test_a_bad_config_stops_the_program_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[api]\nport = 'eighty'\n")
    result = fileproc(config, "jobs", check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"error: {config}: api.port: Input should be a valid integer, "
                                                  "unable to parse string as an integer"]


def test_unknown_function_in_a_pipeline_is_named(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[[pipelines]]\nname = 'p'\nmatch = {bucket = 'b'}\nsteps = [{function = 'nope'}]\n"
                      "output = {bucket = 'o'}\n")
    result = fileproc(config, "jobs", check=False, env={"FILEPROC_DATA_DIR": str(tmp_path / "d")})
    assert result.returncode == 1
    assert result.stderr == ("error: pipelines.p.steps[0].function: no function named 'nope' "
                             "(known: index, logs, probe, thumbnail, transcode, validate)\n")


def test_secrets_never_show(tmp_path: Path) -> None:
    settings = load_settings(env={"FILEPROC_STORAGE_SECRET_KEY": "hunter2-secret",
                                  "FILEPROC_DATA_DIR": str(tmp_path)})
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings.model_dump())


def test_log_level_is_checked_and_any_case_is_fine(tmp_path: Path) -> None:
    assert load_settings(env={"FILEPROC_LOG_LEVEL": "debug"}).log_level == "DEBUG"
    result = fileproc(None, "jobs", check=False, env={"FILEPROC_LOG_LEVEL": "loud", "FILEPROC_DATA_DIR": str(tmp_path)})
    assert result.returncode == 1  # one line naming the field, no traceback
    assert result.stderr == "error: log_level: Input should be 'DEBUG', 'INFO', 'WARNING' or 'ERROR'\n"


def test_a_step_may_name_a_plain_handler_instead_of_a_function(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("pipelines:\n- name: p\n  match: {bucket: b}\n  steps: [{handler: 'pkg.mod:run'}]\n"
                      "  output: {bucket: o}\n")
    (step,) = load_settings(config, env={}).pipelines[0].steps
    assert (step.function, step.handler) == ("pkg.mod:run", "pkg.mod:run")
