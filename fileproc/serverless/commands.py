"""The CLI of user functions: ``fileproc functions ...`` and ``invoke`` (``usage`` and ``logs``: :mod:`.monitoring`).

Thin over :mod:`fileproc.state.deployments`, :mod:`.packages` and
:mod:`fileproc.state.usage`. ``functions`` commands need the state database and
storage only, not a whole service: a pipeline may name a function that is
not deployed yet.
"""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from fileproc.errors import ConfigError, FunctionNotFound
from fileproc.serverless.configuration import configuration_options, given

if TYPE_CHECKING:
    from fileproc.config import Settings
    from fileproc.state import Database
    from fileproc.storage import Storage

HANDLER = re.compile(r"^[A-Za-z_][\w.]*\.[A-Za-z_]\w*$")


def parts(ctx: click.Context) -> tuple[Settings, Database, Storage]:
    from fileproc.state import Database
    from fileproc.storage import open_storage

    settings = ctx.obj.settings
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return settings, Database(settings.database_url, timeout=settings.database.timeout), open_storage(settings)


@click.group()
def functions() -> None:
    """Deploy and manage your own Lambda-style functions.

    \b
    Example:
        fileproc functions new resize
        fileproc functions deploy resize/ --name resize --handler lambda_function.lambda_handler
        fileproc functions list
    """


@functions.command("new")
@click.argument("name")
@click.option("--force", is_flag=True, help="Overwrite files that exist.")
def new(name: str, force: bool) -> None:
    """Make a folder NAME with a handler, a sample S3 event and a test.

    \b
    Example:
        fileproc functions new resize && cd resize && python -m pytest
    """
    from fileproc.serverless.names import NAME
    from fileproc.serverless.scaffold import scaffold

    if not NAME.match(name):
        raise ConfigError(f"{name!r}: a function name is letters, digits, '-' and '_' (at most 64)")
    for path in scaffold(Path(name), name, force=force):
        click.echo(f"wrote {path}")
    click.echo(f"deploy it: fileproc functions deploy {name} --name {name} --handler lambda_function.lambda_handler")


@functions.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--name", required=True, help="The function's name (letters, digits, '-', '_').")
@click.option("--handler", default=None,
              help="MODULE.FUNCTION, Lambda's notation: lambda_function.lambda_handler (kept unless given).")
@configuration_options
@click.pass_context
def deploy(ctx: click.Context, path: Path, name: str, handler: str | None, **flags: Any) -> None:
    """Deploy PATH (a file or a folder) as a new version of NAME and make it live.

    The package goes to storage (every host loads it from there), its
    requirements are installed on this host first (a bad one fails the
    deploy), and the `live` alias moves to the new version: running workers
    pick it up within functions.alias_seconds. As Lambda's update-function-code,
    a new version keeps the live one's configuration (handler, memory,
    timeout, env, requirements...) except what a flag changes, and says what
    changed; `fileproc functions update-config` changes configuration alone.

    \b
    Example:
        fileproc functions deploy lambda_function.py --name resize \\
            --handler lambda_function.lambda_handler --memory 256 --timeout 30 --env SIZE=128
    """
    from fileproc.serverless import packages
    from fileproc.serverless.names import NAME

    if not NAME.match(name):
        raise ConfigError(f"--name {name!r}: letters, digits, '-' and '_' (at most 64)")
    config = given(**flags)
    settings, db, storage = parts(ctx)
    live = _live(db, name)
    handler = handler or (live.handler if live else None)
    if handler is None:
        raise click.UsageError("--handler is required for a function's first version (MODULE.FUNCTION)")
    if not HANDLER.match(handler):
        raise ConfigError(f"--handler {handler!r}: give MODULE.FUNCTION, e.g. lambda_function.lambda_handler")
    module = handler.rpartition(".")[0]
    package = packages.build(path)
    files = _names(package)
    wanted = {f"{module.replace('.', '/')}.py", f"{module.replace('.', '/')}/__init__.py"}
    if not wanted & files:
        raise ConfigError(f"--handler {handler!r}: the package has no module {module!r} "
                          f"(it holds {', '.join(sorted(files)[:5])})")
    key, digest = packages.store(storage, settings.functions.bucket, name, package)
    _publish(ctx, db, name, live, {"handler": handler, **config}, key, digest, code=True)


def _live(db: Database, name: str) -> Any:
    """NAME's live version, or None before its first deploy."""
    from fileproc.state.deployments import LIVE, list_versions

    return next((v for v in list_versions(db, name) if LIVE in v.aliases), None)


def _publish(ctx: click.Context, db: Database, name: str, live: Any, flags: dict[str, Any], key: str, digest: str,
             *, code: bool) -> None:
    """Install and record the next version of NAME (``flags`` over the live one's configuration); say what changed."""
    from fileproc.serverless import packages
    from fileproc.serverless.configuration import changes, merged
    from fileproc.state.deployments import add_version

    settings, _, storage = parts(ctx)
    handler = flags.pop("handler", None) or live.handler
    config = merged(live, flags)
    text = config["requirements"]
    folder = packages.folder_for(settings.data_dir.resolve(), name, digest, text)
    _install(storage, settings.functions.bucket, key, folder, text, digest)
    version = add_version(db, name, handler=handler, package_key=key, package_sha256=digest, **config)
    click.echo(f"deployed {name} version {version.version} (live): {handler}, {version.memory_mb} MB, "
               f"{version.timeout:g} s")
    if live is not None:
        said = changes(live, config) + ([f"handler {live.handler} -> {handler}"] if handler != live.handler else [])
        code_changed = code and digest != live.package_sha256
        what = ([("code changed" if code_changed else "code unchanged")] if code else []) + said
        click.echo(f"from version {live.version}: " + ("; ".join(what) if what else "nothing changed"))


def _install(storage: Storage, bucket: str, key: str, folder: Path, text: str, digest: str) -> None:
    """Install the version's package on this host; with requirements, under a progress indicator on a terminal."""
    import sys

    from fileproc.serverless import packages

    if not text.strip() or folder.exists() or not sys.stderr.isatty():
        packages.install(storage, bucket, key, folder, text, sha256=digest)
        return
    from fileproc.progress import working

    with working("installing requirements"):
        packages.install(storage, bucket, key, folder, text, sha256=digest)


@functions.command("update-config")
@click.argument("name")
@click.option("--handler", default=None, help="MODULE.FUNCTION in the same package (kept unless given).")
@configuration_options
@click.pass_context
def update_config(ctx: click.Context, name: str, handler: str | None, **flags: Any) -> None:
    """Change NAME's configuration alone: a new version with the live one's package, made live.

    As Lambda's update-function-configuration: what no flag names is kept.
    Prints what changed.

    \b
    Example:
        fileproc functions update-config resize --memory 512 --env SIZE=256
    """
    config = given(**flags)
    if handler is not None and not HANDLER.match(handler):
        raise ConfigError(f"--handler {handler!r}: give MODULE.FUNCTION, e.g. lambda_function.lambda_handler")
    _, db, _ = parts(ctx)
    live = _live(db, name)
    if live is None:
        raise FunctionNotFound(f"no deployed function {name!r} (see `fileproc functions list`)")
    if not config and handler is None:
        raise click.UsageError("give at least one setting to change (see --help)")
    _publish(ctx, db, name, live, {"handler": handler, **config}, live.package_key, live.package_sha256, code=False)


def _names(package: bytes) -> set[str]:
    import io
    import zipfile

    with zipfile.ZipFile(io.BytesIO(package)) as archive:
        return set(archive.namelist())


@functions.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def list_cmd(ctx: click.Context, as_json: bool) -> None:
    """The deployed functions and their live versions.

    \b
    Example:
        fileproc functions list
    """
    from fileproc.state.deployments import LIVE, list_versions

    _, db, _ = parts(ctx)
    latest: dict[str, Any] = {}
    counts: dict[str, int] = {}
    for version in list_versions(db):
        counts[version.function] = counts.get(version.function, 0) + 1
        if LIVE in version.aliases:
            latest[version.function] = version
    if as_json:
        click.echo(json.dumps([{**v.to_dict(), "versions": counts[n]} for n, v in sorted(latest.items())]))
        return
    if not latest:
        click.echo("no deployed functions (see `fileproc functions deploy --help`)")
    for name, version in sorted(latest.items()):
        click.echo(f"{name}  live=v{version.version}  {version.handler}  {version.memory_mb} MB  "
                   f"{version.timeout:g} s  ({counts[name]} versions)")


@functions.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (what it prints anyway: every show takes --json).")
@click.pass_context
def show(ctx: click.Context, name: str, as_json: bool) -> None:
    """Everything about NAME's live version, as JSON.

    \b
    Example:
        fileproc functions show resize
    """
    from fileproc.runtime.slots import RUNNERS_FRESH_SECONDS
    from fileproc.state.deployments import LIVE, list_versions, runner_counts
    from fileproc.state.function_urls import get_url

    settings, db, _ = parts(ctx)
    for version in list_versions(db, name):
        if LIVE in version.aliases:
            function_url = get_url(db, name)
            url = {**function_url.to_dict(), "url": url_of(settings, name)} if function_url else None
            counts = runner_counts(db, RUNNERS_FRESH_SECONDS)  # what the workers hold now, on every host
            runners = {state: counts.get((name, state), 0) for state in ("provisioned", "warm")}
            click.echo(json.dumps({**version.to_dict(), "function_url": url, "runners": runners}, indent=2))
            return
    raise FunctionNotFound(f"no deployed function {name!r}")


@functions.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of the versions, oldest first.")
@click.pass_context
def versions(ctx: click.Context, name: str, as_json: bool) -> None:
    """Every version of NAME, with the aliases pointing at each.

    \b
    Example:
        fileproc functions versions resize
    """
    from fileproc.state.deployments import list_versions

    _, db, _ = parts(ctx)
    found = list_versions(db, name)
    if not found:
        raise FunctionNotFound(f"no deployed function {name!r}")
    if as_json:
        click.echo(json.dumps([v.to_dict() for v in found], indent=2))
        return
    for v in found:
        aliases = f"  [{', '.join(v.aliases)}]" if v.aliases else ""
        click.echo(f"v{v.version}  {v.created_at:%Y-%m-%d %H:%M:%S}  {v.handler}  {v.memory_mb} MB  "
                   f"sha256:{v.package_sha256[:12]}{aliases}")


@functions.command()
@click.argument("name")
@click.argument("version", type=int)
@click.pass_context
def rollback(ctx: click.Context, name: str, version: int) -> None:
    """Point NAME's live alias at VERSION (workers follow within functions.alias_seconds).

    \b
    Example:
        fileproc functions rollback resize 1
    """
    from fileproc.state.deployments import LIVE, set_alias

    _, db, _ = parts(ctx)
    set_alias(db, name, LIVE, version)
    click.echo(f"{name}: live is now version {version}")


@functions.command()
@click.argument("name")
@click.pass_context
def delete(ctx: click.Context, name: str) -> None:
    """Forget NAME: its versions, aliases, packages and URL (steps naming it then fail).

    \b
    Example:
        fileproc functions delete resize
    """
    from fileproc.errors import StorageError
    from fileproc.state.deployments import delete_function
    from fileproc.state.function_urls import delete_url

    settings, db, storage = parts(ctx)
    gone = delete_function(db, name)
    if not gone:
        raise FunctionNotFound(f"no deployed function {name!r}")
    delete_url(db, name)
    for key in {v.package_key for v in gone}:
        try:
            storage.delete(settings.functions.bucket, key)
        except StorageError as exc:
            click.echo(f"warning: package {key} not removed: {exc}", err=True)
    click.echo(f"deleted {name} ({len(gone)} versions)")


@functions.command()
@click.argument("name")
@click.pass_context
def token(ctx: click.Context, name: str) -> None:
    """Make NAME's own invoke token (replacing the old one): POST /functions/NAME/invoke without admin.

    Shown once; fileproc keeps only its hash.

    \b
    Example:
        fileproc functions token resize
    """
    from fileproc.state.deployments import list_versions, new_token

    _, db, _ = parts(ctx)
    if not list_versions(db, name):
        raise FunctionNotFound(f"no deployed function {name!r}")
    click.echo(new_token(db, name))


@functions.command()
@click.argument("name")
@click.option("--auth", type=click.Choice(["none", "token"]), default=None,
              help="none: anyone may call it; token: the admin token or NAME's own (`fileproc functions token`) "
                   "as `Authorization: Bearer T`. A new URL's default: token.")
@click.option("--cors", default=None, metavar="ORIGINS",
              help="Origins browsers may call it from, comma-separated (`*`: any; \"\": none).")
@click.option("--delete", "remove", is_flag=True, help="Remove NAME's URL.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def url(ctx: click.Context, name: str, auth: str | None, cors: str | None, remove: bool, as_json: bool) -> None:
    """Give NAME an HTTP endpoint, /fn/NAME/..., as Lambda's function URLs: any method and sub-path.

    The handler gets Lambda's function URL event (rawPath, headers,
    queryStringParameters, body...) and its return value is the answer
    (statusCode, headers, cookies, body). Run again to change the auth or
    CORS (what is not given stays): API hosts follow within functions.alias_seconds.

    \b
    Example:
        fileproc functions url hello --auth none --cors https://example.com
        curl -X POST 'http://127.0.0.1:8080/fn/hello/greet?name=Jane' -d 'hi'
    """
    from fileproc.state.deployments import list_versions
    from fileproc.state.function_urls import delete_url, get_url, set_url

    settings, db, _ = parts(ctx)
    if remove:
        if not delete_url(db, name):
            raise FunctionNotFound(f"{name!r} has no function URL")
        click.echo(json.dumps({"function": name, "deleted": True}) if as_json else f"deleted the URL of {name}")
        return
    if not list_versions(db, name):
        raise FunctionNotFound(f"no deployed function {name!r}")
    before = get_url(db, name)
    origins = _origins(cors) if cors is not None else (before.cors if before else [])
    done = set_url(db, name, auth=auth or (before.auth if before else "token"), cors=origins)
    address = url_of(settings, name)
    if as_json:
        click.echo(json.dumps({**done.to_dict(), "url": address}))
        return
    click.echo(address)
    access = "anyone may call it" if done.auth == "none" else "Authorization: Bearer <admin or function token>"
    click.echo(f"auth {done.auth} ({access}); CORS: {', '.join(done.cors) or 'none'}", err=True)


def url_of(settings: Settings, name: str) -> str:
    """The address of ``name``'s function URL on this host's API."""
    host = settings.api.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.api.port}/fn/{name}/"


def _origins(given: str) -> list[str]:
    """``--cors``' origins: ``*`` or scheme://host[:port] each."""
    origins = [o.strip().rstrip("/") for o in given.split(",") if o.strip()]
    for origin in origins:
        if origin != "*" and not re.match(r"^https?://[^/\s]+$", origin):
            raise ConfigError(f"--cors {origin!r}: give * or an origin, e.g. https://example.com")
    return origins


def replay_dead_letters(service: Any, function: str | None) -> None:
    """``fileproc retry --dead-letters``: run each dead letter's job again, once."""
    from fileproc.serverless.destinations import redrive
    from fileproc.state.deployments import dead_letters

    letters = dead_letters(service.db, function)
    if not letters:
        click.echo("no dead letters to replay")
    for letter, job in redrive(service, letters):
        status = job.status if job is not None else "gone"
        click.echo(f"dead letter {letter['id']} ({letter['function']}, {letter['condition']}): job {letter['job']} "
                   f"{status}")


@functions.command("dead-letters")
@click.argument("name", required=False)
@click.option("--all", "everything", is_flag=True, help="Those already replayed too.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array (each with Lambda's destination record).")
@click.pass_context
def dead_letters_cmd(ctx: click.Context, name: str | None, everything: bool, as_json: bool) -> None:
    """Events deployed functions failed for good (retries exhausted or too old).

    Replay them with `fileproc retry --dead-letters [--function NAME]`.

    \b
    Example:
        fileproc functions dead-letters resize
    """
    from fileproc.state.deployments import dead_letters

    _, db, _ = parts(ctx)
    found = dead_letters(db, name, replayed=everything)
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    for letter in found:
        replayed = f" (replayed {letter['replayed_at']})" if letter["replayed_at"] else ""
        click.echo(f"{letter['id']}  {letter['created_at']}  {letter['function']}:v{letter['version']}  "
                   f"job {letter['job']}  {letter['condition']}: {letter['error']}{replayed}")


@functions.command("deliveries")
@click.argument("name", required=False)
@click.option("--all", "everything", is_flag=True, help="Those delivered too.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array (each with Lambda's destination record).")
@click.pass_context
def deliveries_cmd(ctx: click.Context, name: str | None, everything: bool, as_json: bool) -> None:
    """Destination records not delivered yet (pending, or given up after 24 hours), with their last error.

    \b
    Example:
        fileproc functions deliveries resize
    """
    from fileproc.state.deliveries import list_deliveries

    _, db, _ = parts(ctx)
    found = list_deliveries(db, name, delivered=everything)
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    for item in found:
        state = item["state"]
        if state == "pending":
            state += f", next try {item['next_at']}"
        error = f": {item['last_error']}" if item["last_error"] else ""
        click.echo(f"{item['id']}  {item['created_at']}  {item['function']}:v{item['version']}  job {item['job']}  "
                   f"{item['condition']} -> {item['url']}  {state} after {item['attempts']} tries{error}")

# --- invoke ----------------------------------------------------------------------------------


@click.command()
@click.argument("name")
@click.option("--event", "event_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="An S3 event JSON file (its first record's bucket and key are used).")
@click.option("--bucket", default=None, help="The object's bucket (with --key).")
@click.option("--key", default=None, help="The object's key (with --bucket).")
@click.option("--output-bucket", default=None,
              help="Where context.output writes, under invocations/NAME/ (default: functions.bucket, which no "
                   "pipeline watches; `{bucket}`: the object's own, whose pipelines then see it).")
@click.pass_context
def invoke(ctx: click.Context, name: str, event_file: Path | None, bucket: str | None, key: str | None,
           output_bucket: str | None) -> None:
    """Run function NAME once on an object, here, and print its result and log.

    Runs in a runner of its own like any step, under the function's limits,
    without a job (nothing is recorded). What context.output writes goes to
    functions.bucket under invocations/NAME/ (as a direct invocation's does),
    so it never triggers the object's own pipelines. Exit status 1 if it failed.

    \b
    Example:
        fileproc invoke resize --bucket uploads --key cat.jpg
        fileproc invoke resize --event event.json
    """
    from urllib.parse import unquote_plus

    from fileproc.functions.steps import StepRequest
    from fileproc.objects import event_for
    from fileproc.rules import Pipeline
    from fileproc.runtime.runner import execute, limits_for

    if event_file is not None:
        record = json.loads(event_file.read_text())["Records"][0]["s3"]
        bucket, key = record["bucket"]["name"], unquote_plus(record["object"]["key"])
    if not bucket or not key:
        raise click.UsageError("give --event FILE, or --bucket and --key")
    service = ctx.obj.service
    target = output_bucket or service.settings.functions.bucket
    pipeline = Pipeline.model_validate({"name": f"invoke-{name}", "match": {"bucket": bucket},
                                        "steps": [{"function": name}],
                                        "output": {"bucket": target, "key": f"invocations/{name}/{{key}}/{{name}}"}})
    if "{" not in target:
        service.storage.ensure_bucket(target)
    service.pipelines[pipeline.name] = pipeline
    spec = service.spec(pipeline.steps[0])
    limits = limits_for(spec, pipeline.steps[0])
    info = service.storage.head(bucket, key)
    event = event_for(bucket, key, info, source="invoke")
    request_id = f"invoke-{int(time.time() * 1000)}"
    scratch = service.settings.data_dir / "scratch" / f"invoke.{request_id}"
    request = StepRequest(request_id, pipeline.name, 0, event.to_dict(), info, limits.timeout, limits.memory_mb,
                          str(scratch))
    result = execute(service, request, cancel=threading.Event(), spec=spec)
    from fileproc.runtime.metering import report_line

    value = result.value or {}
    click.echo(value.get("log") or "", nl=False)
    click.echo(report_line(request_id, result.duration_s, limits.memory_mb, result.peak_memory_kb))
    click.echo(json.dumps(value.get("result")))
    error = value.get("error") or ({"message": result.error} if not result.ok else None)
    if error:
        raise click.ClickException(f"{name} failed: {error.get('message')}")


__all__ = ["functions", "invoke", "url_of"]
