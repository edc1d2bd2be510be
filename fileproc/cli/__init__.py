"""The ``fileproc`` command: a thin layer over the Python API.

Every command's help ends with an example. Errors become one line on stderr
(``error: ...``) and exit status 1.

Commands live in one module per area (:mod:`.running`, :mod:`.jobs`,
:mod:`.search`, :mod:`.streams`, :mod:`.schedules`; the deployed functions'
in :mod:`fileproc.serverless.commands`), each adding itself to the one group
in :mod:`.base`.
"""

from __future__ import annotations

import gc
import sys

import click

from fileproc.cli import jobs, running, schedules, search, streams
from fileproc.cli.base import cli, one_line
from fileproc.errors import FileprocError


# --- serverless user functions: fileproc/serverless/commands.py ----------------------
def _add_serverless_commands() -> None:
    from fileproc.serverless.commands import functions, invoke
    from fileproc.serverless.monitoring import logs, usage

    for command in (functions, invoke, logs, usage):
        cli.add_command(command)


_add_serverless_commands()


def main() -> None:
    try:
        cli(standalone_mode=True)
    except FileprocError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    finally:
        # The interpreter's last garbage collections walk every object of every module
        # imported (Celery, FastAPI, SQLAlchemy...): 1-3 s at exit here. Frozen objects
        # are skipped; nothing left needs them collected, the process is ending.
        gc.freeze()


__all__ = ["cli", "jobs", "main", "one_line", "running", "schedules", "search", "streams"]
