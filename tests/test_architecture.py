"""The architecture's contracts (import-linter, in pyproject.toml) hold, and name every module.

The contracts: fileproc's layers (each imports only the layers below it),
the runtime reaching up into no feature, sandbox/state/storage importing only
the core, the built-in functions using only the public surface, and no import
circle. A wrong-way import fails here as it fails ``make lint`` and CI.
"""

from __future__ import annotations

import pkgutil
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import fileproc

ROOT = Path(__file__).resolve().parent.parent
PUBLIC = {"errors", "functions"}  # with fileproc itself: all that workers/ may import


def contracts() -> dict[str, dict[str, Any]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {contract["id"]: contract for contract in config["contracts"]}


def top_level_modules() -> set[str]:
    """fileproc's modules and packages, as import-linter sees them (a folder without __init__.py is not one)."""
    return {module.name for module in pkgutil.iter_modules(fileproc.__path__)} - {"__main__"}


def layers() -> list[set[str]]:
    return [set(re.split(r"[:|]", layer.replace(" ", ""))) for layer in contracts()["layers"]["layers"]]


def differences(listed: set[str]) -> str:
    modules = top_level_modules()
    return f"modules not listed: {sorted(modules - listed)}; listed, no such module: {sorted(listed - modules)}"


def test_the_import_contracts_hold() -> None:
    lint = Path(sys.executable).with_name("lint-imports")  # the venv's, beside this Python
    done = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    report = done.stdout[done.stdout.find("---------\nContracts"):]  # from its list of contracts, past the logo
    assert done.returncode == 0, report + done.stderr


def test_every_module_is_in_a_layer_and_every_layer_exists() -> None:
    # import-linter checks this too (the contract is exhaustive); here it reads as a list of names.
    declared = set().union(*layers())
    assert declared == top_level_modules(), differences(declared)


def test_sandbox_state_and_storage_are_forbidden_every_module_but_the_core() -> None:
    core = layers()[-1]
    forbidden = {name.removeprefix("fileproc.") for name in contracts()["only-core"]["forbidden_modules"]}
    assert not forbidden & core
    assert forbidden | core == top_level_modules(), differences(forbidden | core)


def test_workers_are_forbidden_every_module_but_the_public_surface() -> None:
    forbidden = {name.removeprefix("fileproc.") for name in contracts()["workers"]["forbidden_modules"]}
    assert not forbidden & PUBLIC
    assert forbidden | PUBLIC == top_level_modules(), differences(forbidden | PUBLIC)


def test_no_contract_has_an_escape_hatch() -> None:
    for name, contract in contracts().items():
        assert "ignore_imports" not in contract, f"contract {name!r}: fix the import instead of ignoring it"
