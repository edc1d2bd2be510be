"""The function registry: one per service, filled from entry points, folders and config."""

from __future__ import annotations

import textwrap
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest

from fileproc import dispatch
from fileproc.app import build
from fileproc.config import load_settings
from fileproc.errors import ConfigError, FunctionNotFound
from fileproc.events import ObjectEvent
from fileproc.functions.registry import Registry
from fileproc.runtime.runner import run_step
from fileproc.service import Service
from tests.procs import FUNCTIONS_DIR, fileproc, write_config
from workers.thumbnail import ThumbnailParams
from workers.thumbnail import handler as thumbnail_handler


def settings_for(tmp_path: Path, steps: list[dict[str, Any]] | None = None, paths: list[Path] | None = None,
                 name: str = "fileproc.toml") -> Path:
    data: dict[str, Any] = {"data_dir": str(tmp_path / "data"),
                            "functions": {"paths": [str(p) for p in paths or []]}}
    if steps is not None:
        data["pipelines"] = [{"name": "p", "match": {"bucket": "inbox"}, "steps": steps,
                              "output": {"bucket": "out", "key": "{key}/{name}"}}]
    tmp_path.mkdir(parents=True, exist_ok=True)
    return write_config(tmp_path / name, data)


def service_for(tmp_path: Path, steps: list[dict[str, Any]] | None = None,
                paths: list[Path] | None = None) -> Service:
    return build(load_settings(settings_for(tmp_path, steps, paths), env={}))


def write_module(folder: Path, name: str, source: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    return path


def test_the_builtins_are_found_through_their_entry_point() -> None:
    registry = Registry()
    registry.load_entry_points()
    spec = registry.get("thumbnail")
    assert spec.handler is thumbnail_handler and spec.params is ThumbnailParams
    assert spec.source == "entry point thumbnail = 'workers.thumbnail:handler'"


def test_a_service_without_function_paths_does_not_see_another_services_functions(tmp_path: Path) -> None:
    with_paths = service_for(tmp_path / "a", paths=[FUNCTIONS_DIR])
    assert {"slow", "describe", "thumbnail"} <= set(with_paths.functions.registry.specs())
    without = service_for(tmp_path / "b")
    built_ins = {point.name for point in entry_points(group="fileproc.functions")}
    assert "thumbnail" in built_ins and set(without.functions.registry.specs()) == built_ins  # the built-ins only
    with pytest.raises(FunctionNotFound, match="no function named 'slow'"):
        without.functions.registry.get("slow")


def test_same_named_modules_in_two_folders_both_load(tmp_path: Path) -> None:
    write_module(tmp_path / "one", "x", """
        from fileproc import function

        @function("alpha")
        def handler(event, context):
            return "alpha"
    """)
    write_module(tmp_path / "two", "x", """
        from fileproc import function

        @function("beta")
        def handler(event, context):
            return "beta"
    """)
    service = service_for(tmp_path, paths=[tmp_path / "one", tmp_path / "two"])
    assert service.functions.registry.get("alpha").handler({}, None) == "alpha"
    assert service.functions.registry.get("beta").handler({}, None) == "beta"
    assert service.functions.registry.get("alpha").module != service.functions.registry.get("beta").module


def test_one_name_defined_twice_is_a_config_error(tmp_path: Path) -> None:
    for folder in ("one", "two"):
        write_module(tmp_path / folder, "x", """
            from fileproc import function

            @function("same")
            def handler(event, context):
                pass
        """)
    with pytest.raises(ConfigError, match="function 'same' is defined twice"):
        service_for(tmp_path, paths=[tmp_path / "one", tmp_path / "two"])


def test_a_plain_handler_named_in_the_config_runs(tmp_path: Path) -> None:
    folder = tmp_path / "functions"
    write_module(folder, "plain", """
        def upper(event, context):      # no decorator: named by the config
            with context.input.open() as src:
                data = src.read().upper()
            context.output.put("upper.txt", data + context.params["suffix"].encode())
    """)
    service = service_for(tmp_path, [{"handler": "plain:upper", "params": {"suffix": "!"}}], paths=[folder])
    service.prepare_buckets()
    (step,) = service.pipelines["p"].steps
    assert step.function == "plain:upper" and service.spec(step).queue == "plain:upper"
    info = service.storage.put("inbox", "a.txt", b"shout")
    (item,) = dispatch.submit(service, ObjectEvent("inbox", "a.txt", size=info.size, etag=info.etag), send=False)
    assert run_step(service, item.job.id, 0, "w").status == "succeeded"
    with service.storage.open("out", "a.txt/upper.txt") as fh:
        assert fh.read() == b"SHOUT!"


def test_a_handler_from_an_installed_module_keeps_its_declared_defaults(tmp_path: Path) -> None:
    service = service_for(tmp_path, [{"function": "thumbs", "handler": "workers.thumbnail:handler",
                                      "params": {"sizes": [64]}}])
    spec = service.functions.registry.get("thumbs")
    assert spec.handler is thumbnail_handler and spec.params is ThumbnailParams and spec.queue == "thumbnail"


@pytest.mark.parametrize(("handler", "message"), [
    ("nosuchmodule:handler", "pipelines.p.steps[0].handler: cannot import 'nosuchmodule'"),
    ("workers.thumbnail:nothing", "pipelines.p.steps[0].handler: 'workers.thumbnail' has no function 'nothing'"),
])
def test_a_handler_that_cannot_be_found_is_named(tmp_path: Path, handler: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        service_for(tmp_path, [{"handler": handler}])
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(("params", "message"), [
    ({"size": [128]}, "pipelines.p.steps[0].params.size: unknown param of 'thumbnail' "
                      "(known: animated, background, fit, format, max_frames, metadata, poster_seconds, "
                      "quality, sizes)"),
    ({"sizes": [0]}, "pipelines.p.steps[0].params.sizes: Value error, sizes must be positive integers"),
    ({"format": "bmp"}, "pipelines.p.steps[0].params.format: Value error, format must be one of"),
])
def test_a_params_mistake_fails_at_start_naming_the_field(tmp_path: Path, params: dict[str, Any],
                                                          message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        service_for(tmp_path, [{"function": "thumbnail", "params": params}])
    assert str(caught.value).startswith(message)


def test_a_params_typo_stops_the_cli_and_doctor_names_it(tmp_path: Path) -> None:
    config = settings_for(tmp_path, [{"function": "thumbnail", "params": {"sises": [64]}}])
    result = fileproc(config, "jobs", check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("error: pipelines.p.steps[0].params.sises: unknown param of 'thumbnail'")
    doctor = fileproc(config, "doctor", check=False)
    assert doctor.returncode == 1 and "[ERR] functions: pipelines.p.steps[0].params.sises" in doctor.stdout


def test_params_for_gives_validated_params_with_defaults(tmp_path: Path) -> None:
    service = service_for(tmp_path, [{"function": "thumbnail", "params": {"sizes": [64, 64, 32], "format": "JPG"}}])
    (step,) = service.pipelines["p"].steps
    assert service.params_for(step) == {"sizes": [64, 32], "format": "jpeg", "quality": 85, "fit": "fit",
                                        "metadata": "strip", "background": "white", "poster_seconds": 1.0,
                                        "animated": False, "max_frames": 300}


def test_a_model_that_allows_extra_fields_still_refuses_unknown_params(tmp_path: Path) -> None:
    folder = tmp_path / "functions"
    write_module(folder, "lenient", """
        from pydantic import BaseModel
        from fileproc import function

        class Params(BaseModel):
            times: int = 1

        @function("lenient", params=Params)
        def handler(event, context):
            pass
    """)
    with pytest.raises(ConfigError, match=r"steps\[0\]\.params\.tiems: unknown param of 'lenient' \(known: times\)"):
        service_for(tmp_path, [{"function": "lenient", "params": {"tiems": 2}}], paths=[folder])
    service = service_for(tmp_path, [{"function": "lenient", "params": {"times": "3"}}], paths=[folder])
    assert service.params_for(service.pipelines["p"].steps[0]) == {"times": 3}


def test_a_function_without_a_params_model_gets_its_params_as_written(tmp_path: Path) -> None:
    service = service_for(tmp_path, [{"function": "describe", "params": {"answer": 42}}], paths=[FUNCTIONS_DIR])
    assert service.params_for(service.pipelines["p"].steps[0]) == {"answer": 42}


def test_importing_fileproc_functions_does_not_import_the_builtins() -> None:
    import subprocess
    import sys

    code = "import sys, fileproc.functions, fileproc.functions.registry; print('workers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
