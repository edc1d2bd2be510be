"""Commands that run fileproc or set it up: ``serve``, ``api``, ``worker``, ``init``, ``doctor``."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from fileproc.cli.base import State, cli, pass_state
from fileproc.errors import FileprocError

if TYPE_CHECKING:  # the heavy parts are imported when a command needs them: `--version` stays fast
    pass


@cli.command()
@click.option("--host", default=None, help="Address to listen on (default: api.host, 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port to listen on (default: api.port, 8080).")
@pass_state
def serve(state: State, host: str | None, port: int | None) -> None:
    """Run everything on this machine: broker, API, worker, folder watcher.

    With no config: buckets are folders under ./fileproc-data/buckets, and
    images dropped into `uploads` get thumbnails in `derived`.

    \b
    Example:
        fileproc serve --port 8080
    """
    import logging

    from fileproc.serve import serve as run

    settings = state.settings
    # Which file (if any) is in force: `fileproc match` and `why` answer from the same one.
    logging.getLogger("fileproc.serve").info(
        "config: %s (%d pipeline(s))", state.config.resolve() if state.config else
        "none: the embedded demo (./fileproc.toml, --config or FILEPROC_CONFIG would give one)",
        len(settings.pipelines))
    run(state.service, host or settings.api.host, settings.api.port if port is None else port, state.config_argv())


@cli.command()
@click.option("--host", default=None, help="Address to listen on (default: api.host).")
@click.option("--port", type=int, default=None, help="Port to listen on (default: api.port).")
@click.option("--workers", type=click.IntRange(min=1), default=1,
              help="API processes sharing the port (default 1); 2 on two cores takes about twice the notifications.")
@pass_state
def api(state: State, host: str | None, port: int | None, workers: int) -> None:
    """Run the HTTP API alone: webhook receiver and admin endpoints.

    \b
    Example:
        fileproc --config prod.toml api --host 0.0.0.0 --port 8080 --workers 2
    """
    import uvicorn

    from fileproc.tokens import load_tokens
    from fileproc.web import create_app

    settings = state.settings
    tokens = load_tokens(settings)  # generated ones are written once, before the workers read them
    options: dict[str, Any] = {"host": host or settings.api.host, "port": settings.api.port if port is None else port,
                               "access_log": False, "log_level": settings.log_level.lower()}
    if workers == 1:
        uvicorn.run(create_app(state.service, tokens), **options)
        return
    if state.config:  # each worker process reads the settings itself
        os.environ["FILEPROC_CONFIG"] = str(state.config.resolve())
    from fileproc.metrics import MULTIPROCESS_ENV

    if os.environ.get(MULTIPROCESS_ENV):
        uvicorn.run("fileproc.app:app_from_settings", factory=True, workers=workers, **options)
        return
    import tempfile

    # /metrics sums the receiver counters of every process (prometheus-client's multiprocess mode).
    with tempfile.TemporaryDirectory(prefix="fileproc-metrics-") as folder:
        os.environ[MULTIPROCESS_ENV] = folder
        uvicorn.run("fileproc.app:app_from_settings", factory=True, workers=workers, **options)


@cli.command()
@click.option("--queues", "-Q", default=None,
              help="Comma-separated queues (default: every function's queue); `user-functions`: every deployed "
              "function's queue (fn.NAME), those deployed later too.")
@click.option("--concurrency", type=int, default=None, help="Steps run at once (default: worker.concurrency).")
@click.option("--streams", default=None,
              help="Comma-separated [[streams]] this worker consumes (default: all; '' for none).")
@click.option("--pool", "pool_kind", type=click.Choice(["prefork", "threads"]), default="prefork", show_default=True,
              help="How the worker runs its steps at once: a process each (prefork), or threads of this one "
              "(threads: one process, less memory; each step still runs in its function's runner). "
              "`fileproc serve`'s worker uses threads.")
@pass_state
def worker(state: State, queues: str | None, concurrency: int | None, streams: str | None, pool_kind: str) -> None:
    """Run a worker: takes steps from the broker and runs them, consumes the streams, runs the schedules.

    \b
    Example:
        fileproc --config prod.toml worker --queues thumbnail --concurrency 4
        fileproc --config prod.toml worker --streams clicks,orders
    """
    from fileproc.runtime.app import run_worker
    from fileproc.runtime.lanes import Lanes
    from fileproc.runtime.pool import share_memory_with_pool
    from fileproc.runtime.runner import clean_scratch
    from fileproc.runtime.slots import keep_provisioned
    from fileproc.runtime.tasks import bind_service
    from fileproc.schedules.scheduler import Scheduler
    from fileproc.service import setup_worker_logging
    from fileproc.state.heartbeats import Heartbeat
    from fileproc.streams.consumers import Consumers, chosen

    service = state.service
    try:
        _ = service.db  # opened (and its schema checked) once, here: the pool's processes inherit it
    except FileprocError as exc:  # the database is down: each step opens it (and waits for it) as before
        click.echo(f"warning: {exc}; starting anyway", err=True)
    service.prepare_buckets()
    clean_scratch(service)
    bind_service(service)
    names = None if streams is None else [n.strip() for n in streams.split(",") if n.strip()]
    chosen(state.settings, names)  # a name no mapping has stops the start
    consumers, scheduler = Consumers(service, names), Scheduler(service)
    given = [n.strip() for n in (queues or ",".join(state.settings.worker.queues or service.queues())).split(",")
             if n.strip()]
    try:  # `user-functions`: every deployed function's queue, and (Lanes) each one deployed later
        queue_names = ",".join(service.functions.expand(given))
    except FileprocError as exc:
        click.echo(f"warning: {exc}; the deployed functions' queues are consumed once it answers", err=True)
        queue_names = ",".join(given)
    lanes = Lanes(lambda: service.functions.expand(given), state.settings.worker.queue_refresh)
    setup_worker_logging(state.settings)
    share_memory_with_pool()
    keep_provisioned(service, here=pool_kind == "threads")  # where steps run: each pool process, or this one

    def ready() -> None:  # in this process, once Celery's pool is forked: the threads are in none of its processes
        consumers.start()
        scheduler.start()

    try:
        code = run_worker(queue_names, concurrency or state.settings.worker.concurrency, state.settings.log_level,
                          on_ready=ready, lanes=lanes, pool_cls=pool_kind,
                          heartbeat=Heartbeat(state.settings.database_url, timeout=state.settings.database.timeout))
    finally:
        scheduler.stop()
        consumers.stop()
    sys.exit(code)


@cli.command()
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path), default="fileproc.toml")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def init(path: Path, force: bool) -> None:
    """Write a commented starter config to PATH (default: fileproc.toml).

    A PATH ending in .yaml or .yml gets YAML, any other TOML; missing folders
    are created.

    \b
    Example:
        fileproc init && fileproc --config fileproc.toml serve
    """
    from fileproc.config import load_settings
    from fileproc.starter import starter_config

    if path.exists() and not force:
        raise click.ClickException(f"{path} exists; use --force to overwrite it")
    text = starter_config(path)  # TOML or YAML, as the name says
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as exc:
        raise click.ClickException(f"cannot write {path}: {exc.strerror}") from exc
    load_settings(path, env={})  # the starter must itself be valid
    click.echo(f"wrote {path}")


@cli.command()
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON array of the checks: name, ok, detail, advisory (exit status as without).")
@pass_state
def doctor(state: State, as_json: bool) -> None:
    """Check the config, storage, broker and database, in plain words.

    \b
    Example:
        fileproc --config prod.toml doctor
    """
    import dataclasses
    import json

    from fileproc.doctor import run_checks

    problems, found = 0, []
    for check in run_checks(state.settings):
        found.append(dataclasses.asdict(check))
        problems += not check.ok and not check.advisory
        if not as_json:  # each line as soon as its check is done: a slow one shows which
            mark = "ok " if check.ok else "off" if check.advisory else "ERR"
            click.echo(f"[{mark}] {check.name}: {check.detail}")
    if as_json:
        click.echo(json.dumps(found, indent=2))
    if problems:
        raise click.ClickException(f"{problems} problem(s) found")
