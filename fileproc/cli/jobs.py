"""Commands about objects and jobs: ``put``, ``match``, ``jobs``, ``job``, ``retry``, ``backfill``,
``reconcile``, ``why``."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from fileproc.cli.base import State, broker_answers, cli, one_line, pass_state

if TYPE_CHECKING:  # the heavy parts are imported when a command needs them: `--version` stays fast
    from fileproc.service import Service


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
@click.option("--create-bucket", is_flag=True, help="Make BUCKET if it does not exist (else refused: a typo).")
@pass_state
def put(state: State, file: Path, target: str, content_type: str | None, wait: bool, timeout: float,
        create_bucket: bool) -> None:
    """Upload FILE to BUCKET/KEY; it is processed like any other upload.

    Says which jobs it started, or which job already processed the same
    content. With --wait, waits for them (a running `fileproc serve` or
    worker does the work) and exits with status 1 if one failed. A bucket
    that does not exist is refused unless --create-bucket. With no broker
    answering (serve not running), the jobs stay queued for the next start
    and it says so at once (--wait: exit status 1).

    \b
    Example:
        fileproc put --wait ./cat.jpg uploads/pets/cat.jpg
    """
    from fileproc.objects import event_for

    bucket, key = _split_target(target)
    service = state.service
    if create_bucket or bucket in _pipeline_buckets(service):  # one serve would make: no typo
        service.storage.ensure_bucket(bucket)
    elif not _bucket_exists(service, bucket, key):
        raise click.ClickException(one_line(f"no bucket {bucket!r} (of {', '.join(_buckets(service)) or 'none'}); "
                                            "--create-bucket makes it"))
    info = service.storage.put(bucket, key, file, content_type=content_type)
    answers = broker_answers(state.settings)
    if not answers:
        queue_only(service)
    # Described from a HEAD, as every other source describes it (metadata, version id, time).
    results = service.submit([event_for(bucket, key, service.storage.head(bucket, key, info.version_id),
                                        source="put")])
    click.echo(one_line(f"uploaded {bucket}/{key} ({info.size} bytes, etag {info.etag})"))
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
    waiting = [item.job.id for item in results if item.job.status not in FINISHED]
    if waiting and not answers:
        click.echo(NOT_RUNNING, err=True)
        if wait:
            raise click.ClickException(f"job(s) {', '.join(map(str, waiting))} cannot finish while nothing runs them")
    if wait and results:
        if not _worker_heard(service):
            click.echo("warning: no worker has reported in the last 30 s (is `fileproc serve` or `fileproc worker` "
                       f"running?); waiting up to {timeout:g} s anyway", err=True)
        _wait_for(service, [item.job.id for item in results], timeout)


FINISHED = ("succeeded", "failed", "skipped")
NOT_RUNNING = ("the broker does not answer (is `fileproc serve` running?): the jobs stay queued until the broker is "
               "back; the next fileproc to start (serve, api or worker) sends them")


def _bucket_exists(service: Service, bucket: str, key: str) -> bool:
    from fileproc.errors import BucketNotFound, ObjectNotFound

    try:
        service.storage.head(bucket, key)
    except BucketNotFound:
        return False
    except ObjectNotFound:
        pass
    return True


def _pipeline_buckets(service: Service) -> set[str]:
    """The buckets the configured pipelines watch by name (`fileproc serve` makes them at start)."""
    return {p.match.bucket for p in service.pipelines.values() if not any(c in p.match.bucket for c in "*?[")}


def _buckets(service: Service) -> list[str]:
    from fileproc.errors import StorageError

    try:
        return sorted(service.storage.list_buckets())[:10]
    except StorageError:
        return []


def _worker_heard(service: Service) -> bool:
    """Whether some worker beat recently (its heartbeat row), on any host."""
    from fileproc.errors import FileprocError
    from fileproc.state.heartbeats import workers

    try:
        return any(not worker.silent for worker in workers(service.db))
    except FileprocError:
        return True  # cannot tell: say nothing


def queue_only(service: Service) -> None:
    """Make ``service.submit`` record jobs without sending them (they are due at once for the next relay).

    For a command run while the broker does not answer: its client would
    retry for seconds per batch before giving up, to the same end.
    """
    submit = service.submit

    def record(events: Any, *, send: bool = True, completed: bool = False) -> list[Any]:
        results = submit(events, send=False, completed=completed)
        service.db.unsend([item.job.id for item in results if item.created])
        return results

    service.submit = record


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
            click.echo(one_line(f"job {job.id}: {job.pipeline} {job.status}: {detail}"))
        if pending and time.monotonic() > deadline:
            raise click.ClickException(f"job(s) {', '.join(map(str, pending))} still not finished after {timeout:g} s "
                                       "(is `fileproc serve` or a worker running?)")
        if pending:
            time.sleep(0.2)
    if failed:
        raise click.ClickException(f"{failed} job(s) failed")


@cli.command("match")
@click.argument("target")
@click.option("--event", "event_name", default="s3:ObjectCreated:Put", show_default=True, help="Event type.")
@click.option("--size", type=int, default=None, help="Object size to match against, in bytes.")
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON array: each pipeline with matched, reason (the rule that said no), steps, output.")
@pass_state
def match_cmd(state: State, target: str, event_name: str, size: int | None, as_json: bool) -> None:
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
    if as_json:
        rows = []
        for pipeline, reason in verdicts(state.settings.pipelines, event):
            example = render_key(pipeline.output.key, pipeline=pipeline.name, bucket=bucket, key=key, name="NAME")
            rows.append({"pipeline": pipeline.name, "matched": reason is None, "reason": reason,
                         "steps": [{"function": step.function, "params": step.params} for step in pipeline.steps],
                         "output": {"bucket": pipeline.output.bucket.replace("{bucket}", bucket), "key": example}})
        click.echo(json.dumps(rows, indent=2))
        return
    if not found:
        click.echo(one_line(f"{bucket}/{key}: no pipeline matches"))
        for pipeline, reason in verdicts(state.settings.pipelines, event):
            click.echo(f"  {pipeline.name}: {reason}")
        return
    for pipeline in found:
        click.echo(f"{pipeline.name}:")
        for number, step in enumerate(pipeline.steps, 1):
            params = json.dumps(step.params, sort_keys=True)
            click.echo(f"  {number}. {step.function} {params}")
        example = render_key(pipeline.output.key, pipeline=pipeline.name, bucket=bucket, key=key, name="NAME")
        click.echo(one_line(f"  -> {pipeline.output.bucket.replace('{bucket}', bucket)}/{example}"))


def _job_line(job: Any) -> str:
    error = f"  {job.error}" if job.error else ""
    return one_line(f"{job.id:>6}  {job.status:<9}  {job.pipeline:<16}  {job.bucket}/{job.key}{error}")


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
        click.echo(one_line(f"  attempt step {attempt['step']} {attempt['function']}: {attempt['status']} "
                            f"{attempt['duration_ms'] or 0} ms on {attempt['worker']}"
                            + (f"  {attempt['error']}" if attempt["error"] else "")
                            + (_progress_text(attempt["progress"]) if attempt["status"] == "running" else "")))
    for output in data["outputs"]:
        click.echo(one_line(f"  output {output['bucket']}/{output['key']} ({output['size']} bytes)"
                            + (f"  removed by job {output['removed_by']}" if output.get("removed_by") else "")))
    for output in data["removed"]:
        click.echo(one_line(f"  removed {output['bucket']}/{output['key']} (made by an earlier job)"))
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
    if job_id is not None:
        found = dispatch.retry(state.service, job_id)
        if found is None:
            raise click.ClickException(f"no job {job_id}")
        click.echo(f"job {job_id}: {found.status}")
        return
    from fileproc.progress import progress_bar

    ids = state.service.db.failed_job_ids()
    retried = []
    with progress_bar(total=len(ids), unit=" jobs", desc="retry") as advance:
        for start in range(0, len(ids), RETRY_BATCH):
            chunk = ids[start:start + RETRY_BATCH]
            retried += dispatch.retry_failed(state.service, chunk)
            advance(len(chunk))
    for job in retried:
        click.echo(f"job {job.id}: {job.status}")
    if not retried:
        click.echo("no failed jobs")


RETRY_BATCH = 100
"""Failed jobs reset per relay pass by `retry --failed` (the bar moves between passes)."""


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
    from fileproc.intake.backfill import backfill as run
    from fileproc.progress import progress_bar

    service = state.service
    answers = broker_answers(state.settings)
    if not answers:
        queue_only(service)
    with progress_bar(unit=" objects", desc=f"backfill {bucket}") as advance:
        report = run(service, bucket, prefix, progress=advance)
    click.echo(f"listed {report.listed}, matched {report.matched}: {report.queued} queued, "
               f"{report.retried} retried, {report.already} already done or under way")
    if report.queued and not answers:
        click.echo(NOT_RUNNING, err=True)


def _drift_line(drift: Any) -> str:
    when = drift.finished_at.strftime("%Y-%m-%d %H:%M:%S") if drift.finished_at else ""
    line = (f"{when}  {drift.bucket}: listed {drift.listed}, matched {drift.matched}, covered {drift.covered}, "
            f"{drift.submitted} without a job ({drift.new_objects} new, {drift.new_versions} new versions)")
    if drift.sample:
        line += ": " + ", ".join(drift.sample[:5]) + (" ..." if drift.submitted > 5 else "")
    if drift.recent:
        line += f"; {drift.recent} too recent, left for the next pass"
    return one_line(line + (f"; error: {drift.error}" if drift.error else ""))


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
    else:
        for line in render(found):
            click.echo(one_line(line))
    unreachable = found.storage_error or next(
        (output["storage_error"] for job in found.jobs for output in job.get("outputs", [])
         if output.get("storage_error")), None)
    if unreachable:  # half an answer: what storage holds is unknown
        raise click.ClickException(one_line(f"incomplete: {unreachable}"))
