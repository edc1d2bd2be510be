"""What every command shares: the ``fileproc`` group, its state (settings and service, made on first use)
and output helpers."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from fileproc import __version__

if TYPE_CHECKING:  # the heavy parts are imported when a command needs them: `--version` stays fast
    from fileproc.config import Settings
    from fileproc.service import Service


class State:
    def __init__(self, config: Path | None) -> None:
        self.config = config
        self._settings: Settings | None = None
        self._service: Service | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            from fileproc.config import load_settings
            from fileproc.service import setup_logging

            self._settings = load_settings(self.config)
            setup_logging(self._settings)
        return self._settings

    @property
    def service(self) -> Service:
        if self._service is None:
            from fileproc.app import build

            self._service = build(self.settings)
        return self._service

    def config_argv(self) -> list[str]:
        return ["--config", str(self.config)] if self.config else []


pass_state = click.make_pass_decorator(State)

# Control characters (and Unicode's line and paragraph separators), as Python escapes them: \n, \x1b, \u2028.
_ESCAPES = {code: repr(chr(code))[1:-1] for code in [*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029]}


def one_line(text: str) -> str:
    r"""``text`` with its control characters escaped, so that one item printed per line stays one line.

    A key may hold any character: a newline in one must not start what reads
    as another job, nor a terminal escape recolour the screen. ``--json``
    output stays exact. Example: ``one_line("a\nb") == "a\\nb"``.
    """
    return text.translate(_ESCAPES)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "-c", type=click.Path(path_type=Path, dir_okay=False),
              help="Config file (TOML or YAML); default: $FILEPROC_CONFIG, else none (the embedded demo setup).")
@click.version_option(__version__, prog_name="fileproc")
@click.pass_context
def cli(ctx: click.Context, config: Path | None) -> None:
    """fileproc: process files as they land in your buckets.

    \b
    Example:
        fileproc serve              # everything on this machine
        fileproc put cat.jpg uploads/cat.jpg
        fileproc jobs
    """
    ctx.obj = State(config)
