"""Commands over what the built-ins made: ``search``, ``reindex``, ``logs-summary``."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import click

from fileproc.cli.base import State, cli, one_line, pass_state

if TYPE_CHECKING:  # the heavy parts are imported when a command needs them: `--version` stays fast
    pass


# --- search (see fileproc/search/) ------------------------------------------------------


def _plain_snippet(snippet: str) -> str:
    import html
    import re

    on, off = ("\x1b[1m", "\x1b[0m") if sys.stdout.isatty() else ("[", "]")
    # The document's own text on one line, its control characters escaped; only the marks are ours.
    text = "".join(on if part == "<mark>" else off if part == "</mark>" else
                   one_line(re.sub(r"\s+", " ", html.unescape(part))) for part in re.split(r"(</?mark>)", snippet))
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
        click.echo(one_line(f"{hit.bucket}/{hit.key}  ({hit.type}, score {hit.score:.2f})"))
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
    from fileproc.progress import working
    from fileproc.search.indexer import Indexer

    indexer = Indexer(state.service)
    with indexer.writing(wait=False) as writer:  # never a silent wait on a running indexer's lock
        if not check:
            if not writer:
                raise click.ClickException(BUSY + ": stop it first, then run `fileproc reindex` again")
            with working("rebuilding the search index"):
                count = indexer.rebuild()
                indexer.catch_up()
            click.echo(json.dumps({"documents": count}) if as_json else f"rebuilt the index: {count} document(s)")
            return
        if writer:
            indexer.catch_up()
        else:  # the running indexer keeps it up to date: compared as it stands
            click.echo(f"note: {BUSY}; comparing the index as it stands", err=True)
        found = indexer.check()
    if as_json:
        click.echo(json.dumps(found.to_dict(), indent=2))
    else:
        click.echo(f"indexed {found.indexed}, in storage {found.stored}")
        for name in ("missing", "extra", "stale", "sources_gone"):
            items = getattr(found, name)
            if items:
                more = " ..." if len(items) > 5 else ""
                click.echo(one_line(f"{name}: {len(items)} ({', '.join(items[:5])}{more})"))
    if not found.agrees:
        raise click.ClickException("the index and storage disagree; `fileproc reindex` rebuilds it")


BUSY = ("this host's search index is being written by a running fileproc (the indexer of `fileproc serve` or "
        "`fileproc api`)")


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
