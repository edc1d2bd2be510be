"""The ``fileproc`` command: a thin layer over the Python API.

Every command's help ends with an example. Errors become one line on stderr
(``error: ...``) and exit status 1.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

import click

from fileproc.config import Settings, load_settings
from fileproc.errors import FileprocError
from fileproc.service import Service, setup_logging


class State:
    def __init__(self, config: Path | None) -> None:
        self.config = config
        self._settings: Settings | None = None
        self._service: Service | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.config)
            setup_logging(self._settings)
        return self._settings

    @property
    def service(self) -> Service:
        if self._service is None:
            self._service = Service(self.settings)
        return self._service

    def config_argv(self) -> list[str]:
        return ["--config", str(self.config)] if self.config else []


pass_state = click.make_pass_decorator(State)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "-c", type=click.Path(path_type=Path, dir_okay=False),
              help="Config file (TOML or YAML); default: $FILEPROC_CONFIG, else none (the embedded demo setup).")
@click.version_option(package_name="fileproc")
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
    from fileproc.serve import serve as run

    settings = state.settings
    run(state.service, host or settings.api.host, settings.api.port if port is None else port, state.config_argv())


@cli.command()
@click.option("--host", default=None, help="Address to listen on (default: api.host).")
@click.option("--port", type=int, default=None, help="Port to listen on (default: api.port).")
@pass_state
def api(state: State, host: str | None, port: int | None) -> None:
    """Run the HTTP API alone: webhook receiver and admin endpoints.

    \b
    Example:
        fileproc --config prod.toml api --host 0.0.0.0 --port 8080
    """
    import uvicorn

    from fileproc import dispatch
    from fileproc.api import create_app
    from fileproc.tokens import load_tokens

    settings = state.settings
    service = state.service
    dispatch.flush_pending(service)
    app = create_app(service, load_tokens(settings))
    uvicorn.run(app, host=host or settings.api.host, port=settings.api.port if port is None else port,
                access_log=False, log_level=settings.log_level.lower())


@cli.command()
@click.option("--queues", "-Q", default=None, help="Comma-separated queues (default: every function's queue).")
@click.option("--concurrency", type=int, default=None, help="Steps run at once (default: worker.concurrency).")
@pass_state
def worker(state: State, queues: str | None, concurrency: int | None) -> None:
    """Run a worker: takes steps from the broker and runs them.

    \b
    Example:
        fileproc --config prod.toml worker --queues thumbnail --concurrency 4
    """
    from fileproc.runtime.app import celery_app
    from fileproc.runtime.tasks import bind_service

    service = state.service
    service.prepare_buckets()
    bind_service(service)
    chosen = queues or ",".join(state.settings.worker.queues or service.queues())
    argv = [
        "worker", "--queues", chosen,
        "--concurrency", str(concurrency or state.settings.worker.concurrency),
        "--hostname", f"fileproc-{os.getpid()}@{socket.gethostname()}",
        "--loglevel", state.settings.log_level.upper(),
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]
    celery_app.worker_main(argv)


def _split_target(target: str) -> tuple[str, str]:
    bucket, _, key = target.partition("/")
    if not bucket or not key:
        raise click.BadParameter(f"{target!r} is not BUCKET/KEY")
    return bucket, key


@cli.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("target")
@click.option("--content-type", default=None, help="Content type (default: guessed from the name).")
@pass_state
def put(state: State, file: Path, target: str, content_type: str | None) -> None:
    """Upload FILE to BUCKET/KEY; it is processed like any other upload.

    \b
    Example:
        fileproc put ./cat.jpg uploads/pets/cat.jpg
    """
    from fileproc import dispatch
    from fileproc.events import ObjectEvent

    bucket, key = _split_target(target)
    service = state.service
    service.storage.ensure_bucket(bucket)
    info = service.storage.put(bucket, key, file, content_type=content_type)
    event = ObjectEvent(bucket=bucket, key=key, event_name="s3:ObjectCreated:Put", size=info.size,
                        etag=info.etag, version_id=info.version_id, content_type=info.content_type, source="put")
    results = dispatch.submit(service, event)
    click.echo(f"uploaded {bucket}/{key} ({info.size} bytes, etag {info.etag})")
    for item in results:
        click.echo(f"job {item.job.id}: {item.job.pipeline}")


STARTER_CONFIG = '''\
# fileproc configuration. Every setting can also be set from the environment:
# [section] name -> FILEPROC_SECTION_NAME (e.g. FILEPROC_STORAGE_ENDPOINT).

# Where the embedded default keeps buckets, state and the broker's data.
data_dir = "fileproc-data"
log_level = "INFO"

[storage]
backend = "local"            # "local" (folders under data_dir/buckets) or "s3"
# endpoint = "127.0.0.1:7070"  # S3-compatible endpoint (host:port)
# access_key = "..."
# secret_key = "..."
# secure = true              # https
# region = ""

[broker]
# url = "redis://127.0.0.1:6379/0"   # empty: the embedded broker of `fileproc serve`
visibility_timeout = 300     # seconds before work taken by a dead worker is handed on

[database]
# url = "postgresql+psycopg://fileproc:secret@127.0.0.1/fileproc"   # empty: SQLite in data_dir

[api]
host = "127.0.0.1"
port = 8080
# webhook_token = "..."      # POST /events needs it (MinIO auth_token); empty: generated
# admin_token = "..."        # the admin API needs it; empty: generated (data_dir/tokens.json)

[worker]
concurrency = 2
# queues = ["thumbnail"]     # empty: every function's queue

[functions]
# paths = ["./functions"]    # directories of your own function modules

[watcher]
enabled = true
settle_seconds = 1.0

# Pipelines: which objects go through which functions.
[[pipelines]]
name = "thumbnails"
match = { bucket = "uploads", suffix = [".jpg", ".jpeg", ".png", ".webp", ".gif"], events = ["s3:ObjectCreated:*"] }
steps = [{ function = "thumbnail", params = { sizes = [256, 1024], format = "webp", quality = 85 } }]
output = { bucket = "derived", key = "thumbnails/{key}/{name}" }
'''


@cli.command()
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path), default="fileproc.toml")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def init(path: Path, force: bool) -> None:
    """Write a commented starter config to PATH (default: fileproc.toml).

    \b
    Example:
        fileproc init && fileproc --config fileproc.toml serve
    """
    if path.exists() and not force:
        raise click.ClickException(f"{path} exists; use --force to overwrite it")
    path.write_text(STARTER_CONFIG)
    load_settings(path, env={})  # the starter must itself be valid
    click.echo(f"wrote {path}")


@cli.command("match")
@click.argument("target")
@click.option("--event", "event_name", default="s3:ObjectCreated:Put", show_default=True, help="Event type.")
@click.option("--size", type=int, default=None, help="Object size to match against, in bytes.")
@pass_state
def match_cmd(state: State, target: str, event_name: str, size: int | None) -> None:
    """Show which pipelines (and steps) BUCKET/KEY would go through. Runs nothing.

    \b
    Example:
        fileproc match uploads/pets/cat.jpg
    """
    from fileproc.events import ObjectEvent
    from fileproc.rules import match, render_key

    bucket, key = _split_target(target)
    event = ObjectEvent(bucket=bucket, key=key, event_name=event_name, size=size, source="match")
    found = match(state.settings.pipelines, event)
    if not found:
        click.echo(f"{bucket}/{key}: no pipeline matches")
        return
    for pipeline in found:
        click.echo(f"{pipeline.name}:")
        for number, step in enumerate(pipeline.steps, 1):
            params = json.dumps(step.params, sort_keys=True)
            click.echo(f"  {number}. {step.function} {params}")
        example = render_key(pipeline.output.key, pipeline=pipeline.name, bucket=bucket, key=key, name="NAME")
        click.echo(f"  -> {pipeline.output.bucket.replace('{bucket}', bucket)}/{example}")


def _job_line(job: Any) -> str:
    error = f"  {job.error}" if job.error else ""
    return f"{job.id:>6}  {job.status:<9}  {job.pipeline:<16}  {job.bucket}/{job.key}{error}"


@cli.command()
@click.option("--status", type=click.Choice(["queued", "running", "succeeded", "failed", "skipped"]))
@click.option("--limit", type=int, default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@pass_state
def jobs(state: State, status: str | None, limit: int, as_json: bool) -> None:
    """List jobs, newest first.

    \b
    Example:
        fileproc jobs --status failed --json
    """
    found = state.service.db.list_jobs(status, limit)
    if as_json:
        click.echo(json.dumps([job.to_dict() for job in found], indent=2))
        return
    for job in found:
        click.echo(_job_line(job))


@cli.command()
@click.argument("job_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def job(state: State, job_id: int, as_json: bool) -> None:
    """Show one job: status, attempts, outputs and usage.

    \b
    Example:
        fileproc job 42
    """
    found = state.service.db.get_job(job_id)
    if found is None:
        raise click.ClickException(f"no job {job_id}")
    data = found.to_dict()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(_job_line(found))
    for attempt in data["attempts"]:
        click.echo(f"  attempt step {attempt['step']} {attempt['function']}: {attempt['status']} "
                   f"{attempt['duration_ms'] or 0} ms on {attempt['worker']}"
                   + (f"  {attempt['error']}" if attempt["error"] else ""))
    for output in data["outputs"]:
        click.echo(f"  output {output['bucket']}/{output['key']} ({output['size']} bytes)")
    usage = data["usage"]
    click.echo(f"  usage {usage['duration_ms']} ms, peak {usage['peak_memory_kb'] // 1024} MB, "
               f"{usage['bytes_read']} bytes read, {usage['bytes_written']} written")


@cli.command()
@click.argument("job_id", type=int, required=False)
@click.option("--failed", is_flag=True, help="Retry every failed job.")
@pass_state
def retry(state: State, job_id: int | None, failed: bool) -> None:
    """Run a failed job again (from the step that failed), or all of them.

    \b
    Example:
        fileproc retry 42
        fileproc retry --failed
    """
    from fileproc import dispatch

    if (job_id is None) == (not failed):
        raise click.UsageError("give a JOB_ID or --failed")
    ids = state.service.db.failed_job_ids() if job_id is None else [job_id]
    for one in ids:
        found = dispatch.retry(state.service, one)
        if found is None:
            raise click.ClickException(f"no job {one}")
        click.echo(f"job {one}: {found.status}")


@cli.command()
@click.argument("bucket")
@click.option("--prefix", default="", help="Only keys starting with this.")
@pass_state
def backfill(state: State, bucket: str, prefix: str) -> None:
    """Feed every matching object of BUCKET that has no succeeded job.

    The way to catch up on uploads made while nothing listened.

    \b
    Example:
        fileproc backfill uploads --prefix 2026/
    """
    from tqdm import tqdm

    from fileproc.intake.backfill import backfill as run

    with tqdm(unit=" objects", disable=not sys.stderr.isatty()) as bar:
        report = run(state.service, bucket, prefix, progress=bar.update)
    click.echo(f"listed {report.listed}, matched {report.matched}: {report.queued} queued, "
               f"{report.retried} retried, {report.already} already done or under way")


@cli.command()
@pass_state
def doctor(state: State) -> None:
    """Check the config, storage, broker and database, in plain words.

    \b
    Example:
        fileproc --config prod.toml doctor
    """
    from fileproc.doctor import run_checks

    problems = 0
    for check in run_checks(state.settings):
        mark = "ok " if check.ok else "ERR"
        click.echo(f"[{mark}] {check.name}: {check.detail}")
        problems += not check.ok
    if problems:
        raise click.ClickException(f"{problems} problem(s) found")


def main() -> None:
    try:
        cli(standalone_mode=True)
    except FileprocError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
