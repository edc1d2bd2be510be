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
    """What the commands of one run share: the config file (found once), the settings and service (made on use)."""

    def __init__(self, config: Path | None) -> None:
        self._given = config
        self._config: Path | None = None
        self._found = False
        self._settings: Settings | None = None
        self._service: Service | None = None

    @property
    def config(self) -> Path | None:
        """--config, else $FILEPROC_CONFIG, else ./fileproc.toml when there is one (found on first use)."""
        if not self._found:
            from fileproc.config import find_config

            self._config, self._found = find_config(self._given), True
        return self._config

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
              help="Config file (TOML or YAML); default: $FILEPROC_CONFIG, else ./fileproc.toml if there is one, "
                   "else none (the embedded demo setup).")
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


def broker_answers(settings: Settings, timeout: float = 0.5) -> bool:
    """Whether the broker accepts a connection now, asked in at most ``timeout`` seconds.

    A command that queues work (``put``, ``backfill``) asks first: the
    broker's client would otherwise retry for 7-8 s before giving up, when
    `fileproc serve` (and its embedded broker) is simply not running. The
    work is recorded either way, and the relay of the next fileproc to start
    sends it. Schemes it cannot probe count as answering.
    """
    import socket
    from urllib.parse import urlsplit

    from fileproc.runtime.app import embedded_socket

    try:
        if settings.embedded_broker:
            with socket.socket(socket.AF_UNIX) as probe:
                probe.settimeout(timeout)
                probe.connect(embedded_socket(settings))
            return True
        url = urlsplit(settings.broker.url.get_secret_value())
        ports = {"redis": 6379, "rediss": 6379, "amqp": 5672, "amqps": 5671, "pyamqp": 5672}
        if url.scheme not in ports or not url.hostname:
            return True
        socket.create_connection((url.hostname, url.port or ports[url.scheme]), timeout=timeout).close()
    except OSError:
        return False
    return True
