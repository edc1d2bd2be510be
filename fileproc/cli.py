"""The ``fileproc`` command: a thin layer over the Python API.

Every command's help ends with an example. Errors become one line on stderr
(``error: ...``) and exit status 1.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from fileproc import __version__
from fileproc.errors import FileprocError

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
            from fileproc.service import Service

            self._service = Service(self.settings)
        return self._service

    def config_argv(self) -> list[str]:
        return ["--config", str(self.config)] if self.config else []


pass_state = click.make_pass_decorator(State)

# Control characters (and Unicode's line and paragraph separators), as Python escapes them: \n, \x1b, \u2028.
_ESCAPES = {code: repr(chr(code))[1:-1] for code in [*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029]}


def _one_line(text: str) -> str:
    r"""``text`` with its control characters escaped, so that one item printed per line stays one line.

    A key may hold any character: a newline in one must not start what reads
    as another job, nor a terminal escape recolour the screen. ``--json``
    output stays exact. Example: ``_one_line("a\nb") == "a\\nb"``.
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

    from fileproc.api import create_app
    from fileproc.tokens import load_tokens

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
        uvicorn.run("fileproc.api:app_from_settings", factory=True, workers=workers, **options)
        return
    import tempfile

    # /metrics sums the receiver counters of every process (prometheus-client's multiprocess mode).
    with tempfile.TemporaryDirectory(prefix="fileproc-metrics-") as folder:
        os.environ[MULTIPROCESS_ENV] = folder
        uvicorn.run("fileproc.api:app_from_settings", factory=True, workers=workers, **options)


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
    from fileproc.runtime.app import run_worker
    from fileproc.runtime.runner import clean_scratch
    from fileproc.runtime.tasks import bind_service
    from fileproc.service import setup_worker_logging

    service = state.service
    try:
        _ = service.db  # opened (and its schema checked) once, here: the pool's processes inherit it
    except FileprocError as exc:  # the database is down: each step opens it (and waits for it) as before
        click.echo(f"warning: {exc}; starting anyway", err=True)
    service.prepare_buckets()
    clean_scratch(service)
    bind_service(service)
    chosen = queues or ",".join(state.settings.worker.queues or service.queues())
    setup_worker_logging(state.settings)
    sys.exit(run_worker(chosen, concurrency or state.settings.worker.concurrency, state.settings.log_level))


def _split_target(target: str) -> tuple[str, str]:
    bucket, _, key = target.partition("/")
    if not bucket or not key:
        raise click.BadParameter(f"{target!r} is not BUCKET/KEY")
    return bucket, key


@cli.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("target")
@click.option("--content-type", default=None, help="Content type (default: guessed from the name).")
@click.option("--wait", is_flag=True, help="Wait for the upload's jobs to finish and show what they made.")
@click.option("--timeout", type=float, default=300, show_default=True, help="Longest --wait, in seconds.")
@pass_state
def put(state: State, file: Path, target: str, content_type: str | None, wait: bool, timeout: float) -> None:
    """Upload FILE to BUCKET/KEY; it is processed like any other upload.

    Says which jobs it started, or which job already processed the same
    content. With --wait, waits for them (a running `fileproc serve` or
    worker does the work) and exits with status 1 if one failed.

    \b
    Example:
        fileproc put --wait ./cat.jpg uploads/pets/cat.jpg
    """
    from fileproc import dispatch
    from fileproc.objects import event_for

    bucket, key = _split_target(target)
    service = state.service
    service.storage.ensure_bucket(bucket)
    info = service.storage.put(bucket, key, file, content_type=content_type)
    # Described from a HEAD, as every other source describes it (metadata, version id, time).
    results = dispatch.submit(service, event_for(bucket, key, service.storage.head(bucket, key, info.version_id),
                                                 source="put"))
    click.echo(_one_line(f"uploaded {bucket}/{key} ({info.size} bytes, etag {info.etag})"))
    if not results:
        click.echo("no pipeline matches it: stored, nothing to run (see `fileproc match`)")
    for item in results:
        job = item.job
        if item.created:
            click.echo(f"job {job.id}: {job.pipeline} (queued)")
        elif job.status in FINISHED:
            click.echo(f"already processed by job {job.id} ({job.status}): {job.pipeline}"
                       + (f"; `fileproc retry {job.id}` runs it again" if job.status == "failed" else ""))
        else:
            click.echo(f"already under way as job {job.id} ({job.status}): {job.pipeline}")
    if wait and results:
        _wait_for(service, [item.job.id for item in results], timeout)


FINISHED = ("succeeded", "failed", "skipped")


def _wait_for(service: Service, job_ids: list[int], timeout: float) -> None:
    """Poll until every job has finished; print each one's outcome as it does."""
    deadline = time.monotonic() + timeout
    pending, failed = list(job_ids), 0
    while pending:
        for job_id in list(pending):
            job = service.db.get_job(job_id)
            if job is None or job.status not in FINISHED:
                continue
            pending.remove(job_id)
            failed += job.status == "failed"
            made = ", ".join(f"{o.bucket}/{o.key}" for o in job.outputs)
            detail = job.error if job.status != "succeeded" else (made or "no outputs")
            click.echo(_one_line(f"job {job.id}: {job.pipeline} {job.status}: {detail}"))
        if pending and time.monotonic() > deadline:
            raise click.ClickException(f"job(s) {', '.join(map(str, pending))} still not finished after {timeout:g} s "
                                       "(is `fileproc serve` or a worker running?)")
        if pending:
            time.sleep(0.2)
    if failed:
        raise click.ClickException(f"{failed} job(s) failed")


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
    from fileproc.rules import match, render_key, verdicts

    bucket, key = _split_target(target)
    event = ObjectEvent(bucket=bucket, key=key, event_name=event_name, size=size, source="match")
    found = match(state.settings.pipelines, event)
    if not found:
        click.echo(_one_line(f"{bucket}/{key}: no pipeline matches"))
        for pipeline, reason in verdicts(state.settings.pipelines, event):
            click.echo(f"  {pipeline.name}: {reason}")
        return
    for pipeline in found:
        click.echo(f"{pipeline.name}:")
        for number, step in enumerate(pipeline.steps, 1):
            params = json.dumps(step.params, sort_keys=True)
            click.echo(f"  {number}. {step.function} {params}")
        example = render_key(pipeline.output.key, pipeline=pipeline.name, bucket=bucket, key=key, name="NAME")
        click.echo(_one_line(f"  -> {pipeline.output.bucket.replace('{bucket}', bucket)}/{example}"))


def _job_line(job: Any) -> str:
    error = f"  {job.error}" if job.error else ""
    return _one_line(f"{job.id:>6}  {job.status:<9}  {job.pipeline:<16}  {job.bucket}/{job.key}{error}")


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
        click.echo(_one_line(f"  attempt step {attempt['step']} {attempt['function']}: {attempt['status']} "
                            f"{attempt['duration_ms'] or 0} ms on {attempt['worker']}"
                            + (f"  {attempt['error']}" if attempt["error"] else "")
                            + (_progress_text(attempt["progress"]) if attempt["status"] == "running" else "")))
    for output in data["outputs"]:
        click.echo(_one_line(f"  output {output['bucket']}/{output['key']} ({output['size']} bytes)"
                            + (f"  removed by job {output['removed_by']}" if output.get("removed_by") else "")))
    for output in data["removed"]:
        click.echo(_one_line(f"  removed {output['bucket']}/{output['key']} (made by an earlier job)"))
    usage = data["usage"]
    click.echo(f"  usage {usage['duration_ms']} ms, peak {usage['peak_memory_kb'] // 1024} MB, "
               f"{usage['bytes_read']} bytes read, {usage['bytes_written']} written")


def _progress_text(progress: dict[str, Any] | None) -> str:
    """``  42% done at 1.8x`` for a running attempt that reports progress, else nothing."""
    if not progress:
        return ""
    percent, speed = progress.get("percent"), progress.get("speed")
    done = f"{percent:g}% done" if percent is not None else "running"
    return f"  {done}" + (f" at {speed:g}x" if speed else "")


@cli.command()
@click.argument("job_id", type=int, required=False)
@click.option("--failed", is_flag=True, help="Retry every failed job.")
@click.option("--dead-letters", is_flag=True, help="Replay deployed functions' dead-letter records not replayed yet.")
@click.option("--function", "function", default=None, help="With --dead-letters: only this function's.")
@pass_state
def retry(state: State, job_id: int | None, failed: bool, dead_letters: bool, function: str | None) -> None:
    """Run a failed job again (from the step that failed), or all of them.

    \b
    Example:
        fileproc retry 42
        fileproc retry --failed
        fileproc retry --dead-letters --function resize
    """
    from fileproc import dispatch

    if dead_letters:
        from fileproc.serverless.commands import replay_dead_letters

        replay_dead_letters(state.service, function)
        return
    if (job_id is None) == (not failed):
        raise click.UsageError("give a JOB_ID, --failed or --dead-letters")
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


def _drift_line(drift: Any) -> str:
    when = drift.finished_at.strftime("%Y-%m-%d %H:%M:%S") if drift.finished_at else ""
    line = (f"{when}  {drift.bucket}: listed {drift.listed}, matched {drift.matched}, covered {drift.covered}, "
            f"{drift.submitted} without a job ({drift.new_objects} new, {drift.new_versions} new versions)")
    if drift.sample:
        line += ": " + ", ".join(drift.sample[:5]) + (" ..." if drift.submitted > 5 else "")
    if drift.recent:
        line += f"; {drift.recent} too recent, left for the next pass"
    return _one_line(line + (f"; error: {drift.error}" if drift.error else ""))


@cli.command()
@click.option("--once", is_flag=True, help="List every watched bucket once, print what was found, and exit.")
@click.option("--history", is_flag=True, help="Print the recorded passes that found drift (or failed); list nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (an array; one object per line when looping).")
@pass_state
def reconcile(state: State, once: bool, history: bool, as_json: bool) -> None:
    """List every watched bucket and process the objects no job covers.

    The safety net under lost notifications: at start and then on an
    adaptive interval (reconcile.min_interval .. reconcile.interval, within
    reconcile.cpu_budget of a core), each bucket a pipeline watches is
    listed and every matching object without a job for its current version
    is submitted. What it found ("drift") is recorded and printed. `fileproc
    serve` does this by itself; run this command beside `fileproc api` in a
    deployment. Failed jobs are not retried (see `fileproc retry`).

    \b
    Example:
        fileproc --config prod.toml reconcile --once --json
    """
    from fileproc.intake.reconcile import Reconciler, reconcile_all
    from fileproc.state.drift import history as recorded

    if history or once:
        drifts = recorded(state.service.db, drift_only=True) if history else reconcile_all(state.service)
        if as_json:
            click.echo(json.dumps([d.to_dict() for d in drifts], indent=2))
            return
        for drift in drifts:
            click.echo(_drift_line(drift))
        if once and not drifts:
            click.echo("no pipeline watches a bucket")
        return
    if not state.settings.reconcile.enabled:
        raise click.ClickException("reconciliation is off (reconcile.enabled = false); `--once` still runs")
    echo = (lambda d: click.echo(json.dumps(d.to_dict()))) if as_json else (lambda d: click.echo(_drift_line(d)))
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: a clean stop
        Reconciler(state.service, on_pass=echo).run()


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
        mark = "ok " if check.ok else "off" if check.advisory else "ERR"
        click.echo(f"[{mark}] {check.name}: {check.detail}")
        problems += not check.ok and not check.advisory
    if problems:
        raise click.ClickException(f"{problems} problem(s) found")


@cli.command()
@click.argument("target")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def why(state: State, target: str, as_json: bool) -> None:
    """Why was BUCKET/KEY (not) processed? Everything fileproc knows about it.

    The object in storage now; every notification recorded for it (and
    reconcile passes that found it after its notification was lost); each
    pipeline, and the rule that said no when it does not match; its jobs with
    attempts, errors and outputs, and whether those outputs are in storage.

    \b
    Example:
        fileproc why uploads/pets/cat.jpg
    """
    from fileproc.why import explain, render

    bucket, key = _split_target(target)
    found = explain(state.service, bucket, key)
    if as_json:
        click.echo(json.dumps(found.to_dict(), indent=2))
        return
    for line in render(found):
        click.echo(_one_line(line))


# --- search (see fileproc/search/) ------------------------------------------------------


def _plain_snippet(snippet: str) -> str:
    import html
    import re

    on, off = ("\x1b[1m", "\x1b[0m") if sys.stdout.isatty() else ("[", "]")
    # The document's own text on one line, its control characters escaped; only the marks are ours.
    text = "".join(on if part == "<mark>" else off if part == "</mark>" else
                   _one_line(re.sub(r"\s+", " ", html.unescape(part))) for part in re.split(r"(</?mark>)", snippet))
    return " ".join(text.split())


@cli.command()
@click.argument("query")
@click.option("--bucket", default=None, help="Only objects of this bucket.")
@click.option("--type", "kind", default=None,
              help="Only documents of this kind: text, markdown, html, csv, json, pdf, docx.")
@click.option("--limit", type=click.IntRange(min=1), default=10, show_default=True, help="Hits per page.")
@click.option("--page", type=click.IntRange(min=1), default=1, show_default=True, help="Page of hits.")
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON array of hits: bucket, key, score, snippet (matches in <mark>), type, title.")
@pass_state
def search(state: State, query: str, bucket: str | None, kind: str | None, limit: int, page: int,
           as_json: bool) -> None:
    """Search the text of indexed documents, best hits first.

    QUERY takes words (stemmed: "reports" finds "report"), "quoted phrases",
    AND / OR / NOT, and field:value (title:budget).

    \b
    Example:
        fileproc search "quarterly budget" --bucket docs --type pdf --limit 5
    """
    from fileproc.search.indexer import searcher

    found = searcher(state.service).search(query, bucket=bucket, type=kind, page=page, per_page=limit)
    if as_json:
        click.echo(json.dumps([hit.to_dict() for hit in found.hits], indent=2, ensure_ascii=False))
        return
    if not found.hits:
        click.echo(f"no documents match {query!r}")
        return
    for hit in found.hits:
        click.echo(_one_line(f"{hit.bucket}/{hit.key}  ({hit.type}, score {hit.score:.2f})"))
        click.echo(f"    {_plain_snippet(hit.snippet)}")
    shown = (page - 1) * limit + len(found.hits)
    about = "" if found.exact else "about "  # more matched than this page: the total is an estimate
    click.echo(f"{shown} of {about}{found.total} hit(s)" + (f"; more with --page {page + 1}" if shown < found.total
                                                              else ""))


@cli.command()
@click.option("--check", is_flag=True, help="Only compare the index with storage; exit status 1 if they disagree.")
@click.option("--json", "as_json", is_flag=True, help="Print what was found as JSON.")
@pass_state
def reindex(state: State, check: bool, as_json: bool) -> None:
    """Rebuild this host's search index from the document objects in storage.

    The new index is built beside the old one and swapped in at once, so
    searches go on meanwhile. `--check` compares index, documents and source
    objects instead (a deleted source whose removal never arrived shows as
    `sources_gone`).

    \b
    Example:
        fileproc reindex --check && fileproc reindex
    """
    from fileproc.search.indexer import Indexer

    indexer = Indexer(state.service)
    with indexer.writing(wait=True):
        if not check:
            count = indexer.rebuild()
            indexer.catch_up()
            click.echo(json.dumps({"documents": count}) if as_json else f"rebuilt the index: {count} document(s)")
            return
        indexer.catch_up()
        found = indexer.check()
    if as_json:
        click.echo(json.dumps(found.to_dict(), indent=2))
    else:
        click.echo(f"indexed {found.indexed}, in storage {found.stored}")
        for name in ("missing", "extra", "stale", "sources_gone"):
            items = getattr(found, name)
            if items:
                more = " ..." if len(items) > 5 else ""
                click.echo(_one_line(f"{name}: {len(items)} ({', '.join(items[:5])}{more})"))
    if not found.agrees:
        raise click.ClickException("the index and storage disagree; `fileproc reindex` rebuilds it")


@cli.command("logs-summary")
@click.argument("prefix")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def logs_summary(state: State, prefix: str, as_json: bool) -> None:
    """Rolling totals of the log files under BUCKET/PREFIX (or of a `stream` named in the step's params).

    Each file the `logs` function parsed counts once, in its latest version.

    \b
    Example:
        fileproc logs-summary logs/nginx/ --json
    """
    totals = state.service.db.log_summary(prefix)
    if as_json:
        click.echo(json.dumps(totals, indent=2))
        return
    click.echo(f"{totals['files']} file(s), {totals['records']} records, {totals['bad_lines']} bad lines, "
               f"{totals['bytes']} bytes, error rate {totals['error_rate']:.2%}")
    if totals["status"]:
        click.echo("status: " + ", ".join(f"{code} {count}" for code, count in totals["status"].items()))
    rt = totals["response_ms"]
    if rt["count"]:
        click.echo(f"response time: p50 {rt['p50']} ms, p95 {rt['p95']} ms ({rt['count']} requests)")
    if totals["first"]:
        click.echo(f"from {totals['first']} to {totals['last']}")


# --- serverless user functions: fileproc/serverless/commands.py ----------------------
def _add_serverless_commands() -> None:
    from fileproc.serverless.commands import functions, invoke, logs, usage

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
