"""``fileproc schedules``: the ``[[schedules]]``, their next ticks and last runs; run one now."""

from __future__ import annotations

import json

import click

from fileproc.cli.base import State, cli, one_line, pass_state


@cli.group()
def schedules() -> None:
    """Functions run on a schedule (EventBridge's rate(...) and cron(...), in UTC).

    `fileproc serve` and `fileproc worker` run them; each tick runs once
    across every host. A run is a job of the pipeline `_event.FUNCTION`
    whose bucket is `schedule:NAME` (`fileproc jobs`, `fileproc logs FUNCTION`).

    \b
    Example:
        fileproc schedules list
        fileproc schedules run nightly-report
    """


@schedules.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: one object per schedule.")
@pass_state
def list_cmd(state: State, as_json: bool) -> None:
    """Each schedule: its function, expression, next tick, and its last run (time, status, job).

    \b
    Example:
        fileproc schedules list --json
    """
    from fileproc.schedules.scheduler import overview

    found = overview(state.service)
    if as_json:
        click.echo(json.dumps(found))
        return
    if not found:
        click.echo("no schedules (add [[schedules]] to the config: name, function, expression)")
    for item in found:
        last = item["last_run"]
        ran = (f"last run {last['started_at']} {last['status']} (job {last['job']})" if last else "never run")
        upcoming = f"next {item['next']}" if item["next"] else ("disabled" if not item["enabled"] else "no next tick")
        click.echo(one_line(f"{item['name']}  {item['function']}  {item['expression']}  {upcoming}  {ran}"))


@schedules.command("run")
@click.argument("name")
@pass_state
def run_cmd(state: State, name: str) -> None:
    """Run schedule NAME's function once now, on a Scheduled Event of this time; print its result.

    Recorded as a job like a tick's run; no tick is taken. Exit status 1 if it failed.

    \b
    Example:
        fileproc schedules run nightly-report
    """
    from fileproc.schedules.scheduler import Scheduler

    invocation = Scheduler(state.service).run_now(name)
    if invocation.ok:
        click.echo(f"ran {name}: succeeded in {invocation.duration_ms} ms (job {invocation.job_id})")
        click.echo(json.dumps(invocation.result))
        return
    error = invocation.error or {}
    raise click.ClickException(one_line(f"{name} failed{f' (job {invocation.job_id})' if invocation.job_id else ''}: "
                                        f"{error.get('errorType')}: {error.get('errorMessage')}"))


__all__ = ["list_cmd", "run_cmd", "schedules"]
