"""A deployed function's configuration across versions: what a deploy keeps, what it changes, and saying so.

As Lambda's ``update-function-code`` keeps the memory, timeout, environment
and the rest, a deploy (and ``fileproc functions update-config``) takes
each setting from its flag when one is given, else from the live version,
else the default below. :func:`changes` names what differs from the live
version, for the command to print.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from fileproc.errors import ConfigError

if TYPE_CHECKING:
    from fileproc.state.deployments import FunctionVersion

DEFAULTS: dict[str, Any] = {"timeout": 60.0, "memory_mb": 128, "disk_mb": 512, "concurrency": None, "retries": 2,
                            "backoff": 2.0, "max_event_age": 21600.0, "on_success": None, "on_failure": None,
                            "env": {}, "requirements": "", "provisioned": 0}
"""A first version's configuration where no flag says otherwise."""

UNITS = {"timeout": " s", "memory_mb": " MB", "disk_mb": " MB", "backoff": " s", "max_event_age": " s"}
SHOWN = {"memory_mb": "memory", "disk_mb": "disk", "max_event_age": "max event age", "on_success": "on-success",
         "on_failure": "on-failure"}

F = TypeVar("F", bound=Callable[..., Any])


def configuration_options(command: F) -> F:
    """The flags of a function's configuration, shared by ``deploy`` and ``update-config``; each unset by default."""
    options = [
        click.option("--timeout", type=click.FloatRange(min=0.1), default=None,
                     help="Seconds (first version: 60; later: kept)."),
        click.option("--memory", type=click.IntRange(min=16), default=None,
                     help="MB (first version: 128; later: kept)."),
        click.option("--concurrency", type=click.IntRange(min=0), default=None,
                     help="Reserved concurrency: at most K steps at once (0: none reserved; kept unless given)."),
        click.option("--provisioned", type=click.IntRange(min=0), default=None,
                     help="Runners kept warm in each worker step process: started ahead, never stopped for "
                          "idleness (Lambda's provisioned concurrency; 0: none; kept unless given)."),
        click.option("--disk", type=click.IntRange(min=1), default=None,
                     help="MB: the largest file the function may write (Lambda's /tmp default: 512; kept unless "
                          "given)."),
        click.option("--retries", type=click.IntRange(min=0), default=None,
                     help="Re-runs after a failure that may pass (Lambda's asynchronous default: 2; kept unless "
                          "given)."),
        click.option("--backoff", type=click.FloatRange(min=0), default=None,
                     help="Seconds before the first retry, doubled for each next one (default 2; kept unless given)."),
        click.option("--max-event-age", type=click.FloatRange(min=1), default=None,
                     help="Seconds: an event older than this is not tried again (dead-lettered). Lambda's default: "
                          "6 h; kept unless given."),
        click.option("--on-success", default=None,
                     help="URL POSTed Lambda's destination record after a success ('' removes it; kept unless given)."),
        click.option("--on-failure", default=None,
                     help="URL POSTed Lambda's destination record after the last failure ('' removes it; kept unless "
                          "given)."),
        click.option("--env", "env", multiple=True,
                     help="KEY=VALUE for the function's environment (repeatable): the whole environment, replacing "
                          "the live version's; kept unless given."),
        click.option("--clear-env", is_flag=True, help="No environment variables (the live version's are dropped)."),
        click.option("--requirements", type=click.Path(exists=True, dir_okay=False), default=None,
                     help="A requirements.txt installed for the version (pip install --target); kept unless given "
                          "(an empty file drops them)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def given(*, timeout: float | None, memory: int | None, concurrency: int | None, disk: int | None,
          retries: int | None, backoff: float | None, max_event_age: float | None, on_success: str | None,
          on_failure: str | None, env: tuple[str, ...], clear_env: bool, requirements: str | None,
          provisioned: int | None = None) -> dict[str, Any]:
    """The settings the flags set (field -> value), checked; a flag not given is absent."""
    from pathlib import Path

    found: dict[str, Any] = {}
    for field, value in (("timeout", timeout), ("memory_mb", memory), ("disk_mb", disk), ("retries", retries),
                         ("backoff", backoff), ("max_event_age", max_event_age), ("provisioned", provisioned)):
        if value is not None:
            found[field] = value
    if concurrency is not None:
        found["concurrency"] = concurrency or None
    for field, url in (("on_success", on_success), ("on_failure", on_failure)):
        if url is None:
            continue
        if url and not url.startswith(("http://", "https://")):
            raise ConfigError(f"{url!r}: a destination is an http:// or https:// URL")
        found[field] = url or None
    if env and clear_env:
        raise ConfigError("--env and --clear-env: give one")
    if env or clear_env:
        variables = {}
        for item in env:
            key, sep, text = item.partition("=")
            if not sep or not key:
                raise ConfigError(f"--env {item!r}: give KEY=VALUE")
            variables[key] = text
        found["env"] = variables
    if requirements is not None:
        found["requirements"] = Path(requirements).read_text()
    return found


def merged(live: FunctionVersion | None, flags: dict[str, Any]) -> dict[str, Any]:
    """The next version's configuration: each setting from ``flags``, else the live version, else the default."""
    kept = {field: getattr(live, field) for field in DEFAULTS} if live is not None else dict(DEFAULTS)
    return {**kept, **flags}


def changes(live: FunctionVersion | None, new: dict[str, Any]) -> list[str]:
    """What ``new`` changes from ``live``, in words: ``memory 128 -> 256 MB``, ``env SIZE added``."""
    if live is None:
        return []
    said = []
    for field in DEFAULTS:
        before, after = getattr(live, field), new[field]
        if before == after:
            continue
        name = SHOWN.get(field, field)
        if field == "env":
            said += _env_changes(before, after)
        elif field == "requirements":
            said.append("requirements changed" if after else "requirements removed")
        else:
            unit = UNITS.get(field, "")
            said.append(f"{name} {_shown(before)}{unit if before is not None else ''} -> "
                        f"{_shown(after)}{unit if after is not None else ''}")
    return said


def _env_changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    return ([f"env {', '.join(added)} added"] if added else []) + \
        ([f"env {', '.join(removed)} removed"] if removed else []) + \
        ([f"env {', '.join(changed)} changed"] if changed else [])


def _shown(value: Any) -> str:
    if value is None:
        return "none"
    return f"{value:g}" if isinstance(value, float) else str(value)


__all__ = ["DEFAULTS", "changes", "configuration_options", "given", "merged"]
