"""``fileproc streams``: the configured event source mappings, where each stands, and records put by hand."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from fileproc.cli.base import State, cli, one_line, pass_state


@cli.group()
def streams() -> None:
    """Streams of records mapped to functions ([[streams]] in the config).

    \b
    Example:
        fileproc --config fileproc.toml streams status
    """


@streams.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@pass_state
def list_streams(state: State, as_json: bool) -> None:
    """Each mapping: its source, function, batching and starting position.

    \b
    Example:
        fileproc streams list --json
    """
    rows = [m.model_dump(mode="json", exclude_none=True) | {"source": m.shown_source} for m in state.settings.streams]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for m in state.settings.streams:
        off = "" if m.enabled else "\t(disabled)"
        click.echo(one_line(f"{m.name}\t{m.shown_source}\t-> {m.function}\tbatch {m.batch_size}, window "
                            f"{m.batch_window:g} s, from {m.starting_position}{off}"))


@streams.command()
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@pass_state
def status(state: State, name: str | None, as_json: bool) -> None:
    """Per partition: committed and newest positions, lag (records, seconds), counts, the last error.

    \b
    Example:
        fileproc streams status clicks
    """
    from fileproc.streams.admin import status as stream_status

    found = stream_status(state.service, name)
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    for entry in found:
        click.echo(one_line(f"{entry['name']}  {entry['source']} -> {entry['function']}"
                            + (f"  error: {entry['error']}" if entry["error"] else "")))
        for p in entry["partitions"]:
            click.echo(one_line(
                f"  partition {p['partition']}: committed {p['committed'] or '-'}, newest {p['newest'] or '-'}, "
                f"lag {_or_dash(p['lag_records'])} records / {_or_dash(p['lag_seconds'])} s, "
                f"{p['batches']} batches, {p['records']} records, {p['filtered']} filtered, {p['failed']} failed, "
                f"{p['in_flight']} in flight" + (f"; last error: {p['last_error']}" if p["last_error"] else "")))


def _or_dash(value: object) -> str:
    return "-" if value is None else str(value)


@streams.command()
@click.argument("name")
@click.argument("data")
@click.option("--key", default=None, help="The record's key (partition key): records of one key keep their order.")
@pass_state
def put(state: State, name: str, data: str, key: str | None) -> None:
    """Put one record on stream NAME: DATA as given, @FILE for a file's bytes, - for standard input.

    \b
    Example:
        fileproc streams put clicks '{"page": "/"}'
    """
    from fileproc.streams.admin import put as put_records

    if data == "-":
        payload = sys.stdin.buffer.read()
    elif data.startswith("@"):
        try:
            payload = Path(data[1:]).read_bytes()
        except OSError as exc:
            raise click.ClickException(f"cannot read {data[1:]}: {exc.strerror}") from exc
    else:
        payload = data.encode()
    (done,) = put_records(state.service, name, [(key.encode() if key is not None else None, payload)])
    click.echo(f"put on {name}: partition {done.partition}, position {done.position}")


@streams.command()
@click.argument("name")
@click.option("--to", "to", required=True, help="trim_horizon, latest, or an ISO time.")
@pass_state
def reset(state: State, name: str, to: str) -> None:
    """Move stream NAME's consumers to the oldest record, the newest, or a time (stop its workers first).

    \b
    Example:
        fileproc streams reset clicks --to 2026-12-05T12:00:00+00:00
    """
    from fileproc.streams.admin import reset as reset_stream

    reset_stream(state.service, name, to)
    click.echo(f"{name}: reset to {to}")


@streams.command("dead-letters")
@click.argument("name", required=False)
@click.option("--replay", "replay_id", type=int, default=None,
              help="Run dead letter ID's records (read again from the stream) through its function now.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@pass_state
def dead_letters(state: State, name: str | None, replay_id: int | None, as_json: bool) -> None:
    """Batches given up (retries exhausted, too old): their positions and why, newest first; --replay ID runs one again.

    \b
    Example:
        fileproc streams dead-letters clicks --json
        fileproc streams dead-letters --replay 7
    """
    from fileproc.state.streams import dead_letters as letters

    if replay_id is not None:
        _replay(state, replay_id, as_json)
        return
    found = letters(state.service.db, name)
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    for letter in found:
        info = letter["record"].get("KinesisBatchInfo") or letter["record"].get("KafkaBatchInfo") or {}
        first = info.get("startSequenceNumber", info.get("startOffset"))
        last = info.get("endSequenceNumber", info.get("endOffset"))
        replayed = f", replayed {letter['replayed_at']}" if letter["replayed_at"] else ""
        click.echo(one_line(f"#{letter['id']} {letter['stream']} {first}..{last} ({info.get('batchSize')} records) "
                            f"{letter['condition']}: {letter['error']} (job {letter['job']}{replayed})"))


def _replay(state: State, letter_id: int, as_json: bool) -> None:
    from fileproc.streams.admin import replay

    done = replay(state.service, letter_id)
    if as_json:
        click.echo(json.dumps({"records": done.records, "batch_size": done.batch_size, "ok": done.ok,
                               "error": done.error, "job": done.job_id}))
    elif done.ok:
        click.echo(f"replayed #{letter_id}: {done.records} of its {done.batch_size} records ran (job {done.job_id})")
    else:
        click.echo(one_line(f"replay of #{letter_id} failed ({done.records} of {done.batch_size} records found): "
                            f"{(done.error or {}).get('errorType')}: {(done.error or {}).get('errorMessage')}"))
    if not done.ok:
        sys.exit(1)
