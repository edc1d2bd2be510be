"""What ran, what it cost and what it printed: ``fileproc usage`` and ``fileproc logs``.

Thin over :mod:`fileproc.state.usage` and :mod:`fileproc.state.attempt_logs`;
like ``fileproc functions``, they need the state database only.
"""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import click

from fileproc.errors import FileprocError, FunctionNotFound
from fileproc.serverless.commands import parts

if TYPE_CHECKING:
    from fileproc.state import Database
    from fileproc.state.attempt_logs import AttemptLog

UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
"""An invocation on an event's RequestId (Lambda's form); a step's is JOB-STEP-ATTEMPT."""


def _since(value: str | None) -> datetime | None:
    """``7d``, ``12h``, ``30m`` ago, or an ISO date."""
    if not value:
        return None
    found = re.fullmatch(r"(\d+)([dhm])", value)
    if found:
        unit = {"d": "days", "h": "hours", "m": "minutes"}[found.group(2)]
        return datetime.now(UTC) - timedelta(**{unit: int(found.group(1))})
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r}: give 7d, 12h, 30m or a date (2026-11-01)") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@click.command()
@click.option("--function", "function", default=None, help="Only this function.")
@click.option("--pipeline", default=None, help="Only this pipeline.")
@click.option("--since", default=None, help="Only invocations since: 7d, 12h, 30m, or a date.")
@click.option("--by", type=click.Choice(["function", "pipeline", "day"]), default="function", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array: one object per group.")
@click.pass_context
def usage(ctx: click.Context, function: str | None, pipeline: str | None, since: str | None, by: str,
          as_json: bool) -> None:
    """What ran and what it would cost: requests, GB-seconds, billed ms, cold starts.

    Cost uses usage.price_per_request and usage.price_per_gb_second
    (defaults: AWS Lambda's x86 prices).

    \b
    Example:
        fileproc usage --since 7d --by day
    """
    from fileproc.state.usage import usage as measure

    settings, db, _ = parts(ctx)
    groups = measure(db, settings, by=by, function=function, pipeline=pipeline, since=_since(since))
    if as_json:
        click.echo(json.dumps([group.to_dict(by) for group in groups], indent=2))
        return
    if not groups:
        click.echo("nothing ran")
        return
    click.echo(f"{by:<24} {'requests':>9} {'cold':>5} {'errors':>6} {'billed ms':>11} {'GB-s':>12} {'cost $':>12}")
    for g in groups:
        click.echo(f"{g.group:<24} {g.requests:>9} {g.cold_starts:>5} {g.errors:>6} {g.billed_ms:>11} "
                   f"{g.gb_seconds:>12.6f} {g.cost:>12.8f}")


@click.command()
@click.argument("name")
@click.option("--request", "request_id", default=None,
              help="Only this invocation: its RequestId (JOB-STEP-ATTEMPT, or an event invocation's UUID).")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new invocations as they finish.")
@click.option("--limit", type=int, default=20, show_default=True, help="The last this many invocations.")
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON array of invocations (request_id, job, step, attempt, log); with --follow, one "
                   "JSON object per line as each arrives.")
@click.pass_context
def logs(ctx: click.Context, name: str, request_id: str | None, follow: bool, limit: int, as_json: bool) -> None:
    """What function NAME printed, invocation by invocation (START ... END, REPORT).

    \b
    Example:
        fileproc logs resize --follow
    """
    from fileproc.state.attempt_logs import attempt_logs

    _, db, _ = parts(ctx)
    attempt_id, invocation = None, None
    if request_id and UUID.match(request_id):  # an invocation on an event (a stream's batch, a tick, a request)
        invocation = request_id.lower()
    elif request_id:
        job, step, attempt = [*request_id.split("-"), "", "", ""][:3]
        if not (job.isdigit() and step.isdigit() and attempt.isdigit()):
            raise click.BadParameter(f"{request_id!r} is not a fileproc RequestId (JOB-STEP-ATTEMPT, or a UUID)")
        attempt_id = int(attempt)

    def query(after: int) -> list[AttemptLog]:
        return attempt_logs(db, name, after=after, attempt_id=attempt_id, request_id=invocation, limit=limit)

    last = 0
    rows = query(last)
    if not rows and not follow and (request_id or not _known(ctx, db, name)):
        raise FunctionNotFound(f"no logged invocation of {name!r}" + (f" with RequestId {request_id}"
                                                                       if request_id else ""))
    if as_json and not follow:  # a list: one array, `[]` when nothing ran yet
        click.echo(json.dumps([_invocation(row) for row in rows], indent=2))
        return
    if not rows and not follow:
        click.echo(f"no logged invocation of {name!r} yet", err=True)
    while True:
        for row in rows:
            click.echo(json.dumps(_invocation(row)) if as_json else row.log, nl=as_json)
            last = row.id
        if not follow:
            return
        time.sleep(1.0)
        rows = query(last)


START = re.compile(r"^START RequestId: (\S+)", re.M)


def _invocation(row: AttemptLog) -> dict[str, object]:
    """One logged invocation as ``logs --json`` prints it."""
    found = START.search(row.log)
    request = found.group(1) if found else f"{row.job_id}-{row.step_index}-{row.id}"
    return {"request_id": request, "job": row.job_id, "step": row.step_index, "attempt": row.id, "log": row.log}


def _known(ctx: click.Context, db: Database, name: str) -> bool:
    """Whether ``name`` is a function fileproc knows (deployed, or registered): nothing logged is then no error."""
    from fileproc.functions.registry import Registry
    from fileproc.state.deployments import list_versions

    if list_versions(db, name):
        return True
    try:
        return name in Registry.loaded(ctx.obj.settings)
    except FileprocError:
        return False


__all__ = ["logs", "usage"]
