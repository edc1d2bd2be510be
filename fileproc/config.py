"""Settings: every knob defined once, read from a file and the environment.

Sources, later ones winning: the defaults below, the config file (TOML or
YAML, from ``--config`` or ``FILEPROC_CONFIG``; the CLI also finds
``./fileproc.toml``, :func:`find_config`), then ``FILEPROC_*``
environment variables. A setting ``[section] name`` is read from
``FILEPROC_SECTION_NAME`` (``data_dir`` from ``FILEPROC_DATA_DIR``). This
module is the only one that reads the environment.

Pipelines live in the file only (``[[pipelines]]``); with no config file the
demo pipeline (images in ``uploads`` -> thumbnails in ``derived``) is active.

A bad value stops the program at start with a message naming the field::

    >>> load_settings(env={"FILEPROC_API_PORT": "eighty"})
    Traceback (most recent call last):
    ConfigError: api.port: Input should be a valid integer ...
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from fileproc.errors import ConfigError
from fileproc.mappings import Schedule, StreamMapping
from fileproc.rules import Pipeline


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StorageSettings(Section):
    backend: Literal["local", "s3"] = Field(
        "local",
        description="Where buckets live: `local` (folders under data_dir/buckets) or `s3` (any S3-compatible store).",
    )
    endpoint: str = Field(
        "", description="S3 endpoint as host:port, e.g. `s3.example.com` or `127.0.0.1:7070` (backend = s3)."
    )
    access_key: SecretStr = Field(SecretStr(""), description="S3 access key (backend = s3). Never logged.")
    secret_key: SecretStr = Field(SecretStr(""), description="S3 secret key (backend = s3). Never logged.")
    secure: bool = Field(True, description="Use TLS (https) to reach the S3 endpoint.")
    region: str = Field("", description="S3 region; empty lets the store decide.")


class BrokerSettings(Section):
    url: SecretStr = Field(
        SecretStr(""),
        description="Celery broker URL (`redis://host:6379/0`, `amqp://...`). "
        "Empty: the embedded Redis under data_dir/broker, started by `fileproc serve`.",
    )
    visibility_timeout: int = Field(
        300,
        ge=1,
        description="Seconds before a message taken by a worker that died (kill -9) is handed to another worker "
        "(Redis broker).",
    )


class DatabaseSettings(Section):
    url: SecretStr = Field(
        SecretStr(""),
        description="SQLAlchemy URL of the state database. Empty: SQLite at data_dir/state.db. PostgreSQL: `postgresql+psycopg://user:pass@host/db`.",
    )
    timeout: float = Field(
        10.0,
        gt=0,
        description="Seconds to wait for the database to connect or answer a statement before giving up "
        "(a host cut off from it notices instead of hanging).",
    )


class ApiSettings(Section):
    host: str = Field("127.0.0.1", description="Address the HTTP API listens on.")
    port: int = Field(8080, ge=0, le=65535, description="Port the HTTP API listens on.")
    webhook_token: SecretStr = Field(
        SecretStr(""),
        description="Bearer token that `POST /events` requires (MinIO's `auth_token`; or `?token=` in the URL). "
        "Empty: a random one is made and kept in data_dir/tokens.json.",
    )
    admin_token: SecretStr = Field(
        SecretStr(""),
        description="Bearer token for the admin API (jobs, retry, backfill). Must differ from webhook_token. "
        "Empty: made and kept like webhook_token.",
    )
    max_body_bytes: int = Field(
        1_048_576, ge=1024, description="Largest body `POST /events`, `POST /streams/NAME/records` and a function "
                                        "URL take; larger ones get 413."
    )
    max_records: int = Field(
        1000, ge=1, description="Most records one notification body may carry; more get 413."
    )


class RuntimeSettings(Section):
    lease_seconds: float = Field(
        10.0,
        ge=2,
        description="A running step holds a lease this long, renewed by its worker every fifth of it; a step whose "
        "worker died or was cut off runs again elsewhere once its lease ran out.",
    )
    relay_interval: float = Field(
        2.0,
        gt=0,
        description="How often every fileproc process sends queued work that is due (new, retried, or whose "
        "message was lost) to the broker.",
    )
    resend_after: float = Field(
        60.0,
        gt=0,
        description="A job sent to the broker but not started after this many seconds is sent again "
        "(its message was lost); a duplicate message is harmless.",
    )
    redis_fast_path: bool = Field(
        True,
        description="On a Redis broker, write step messages straight onto the queues' lists, as Celery would "
        "write them, at a twelfth of Celery's CPU per message. Off: every message goes through Celery's "
        "own send (for a Celery or kombu whose messages differ, or to rule the shortcut out).",
    )
    idle_seconds: float = Field(
        300.0,
        gt=0,
        description="A function's warm runner that ran nothing for this many seconds is stopped (scale to zero; "
        "Lambda keeps an idle environment about as long): its next step is a cold start.",
    )
    provisioned: dict[str, int] = Field(
        default_factory=dict,
        description="Runners kept warm for built-in and `functions.paths` functions, by name "
        "(`provisioned = { thumbnail = 1 }`; environment: `thumbnail=1,index=1`): started with each of a "
        "worker's step processes, never stopped for idleness. Deployed functions: `functions deploy --provisioned`.",
    )

    @field_validator("provisioned", mode="before")
    @classmethod
    def _provisioned_from_text(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        pairs = [item.partition("=") for item in value.split(",") if item.strip()]
        return {name.strip(): count.strip() for name, _, count in pairs}

    @field_validator("provisioned")
    @classmethod
    def _provisioned_counts(cls, value: dict[str, int]) -> dict[str, int]:
        for name, count in value.items():
            if count < 0:
                raise ValueError(f"{name}: a count of runners is 0 or more, not {count}")
        return value


class ReconcileSettings(Section):
    enabled: bool = Field(
        True,
        description="List every watched bucket at start and then on an interval, and process what no job covers "
        "(`fileproc serve`, `fileproc reconcile`).",
    )
    interval: float = Field(
        300.0,
        gt=0,
        description="The longest time between two listings of one bucket, in seconds.",
    )
    min_interval: float = Field(
        60.0,
        gt=0,
        description="The shortest time between two listings of one bucket (a small bucket is listed this often). "
        "Listings asked for by a job skipped as superseded come besides, at most one per `min_interval` per bucket.",
    )
    cpu_budget: float = Field(
        0.03,
        gt=0,
        le=1,
        description="Share of one core that listing may use; a big bucket is listed less often to stay within it.",
    )


class WorkerSettings(Section):
    concurrency: int = Field(2, ge=1, description="Steps one `fileproc worker` runs at once.")
    queues: list[str] = Field(
        default_factory=list, description="Queues a worker consumes; empty: every registered function's queue. "
        "`user-functions` stands for every deployed function's queue (`fn.NAME`), those deployed later too."
    )
    queue_refresh: float = Field(
        1.0, ge=0.1,
        description="Seconds between a worker's looks at the deployed functions, to consume the queue of one "
        "deployed since it started.",
    )


class FunctionSettings(Section):
    paths: list[Path] = Field(
        default_factory=list,
        description="Directories of user function modules (`*.py`), loaded at start like the built-ins.",
    )
    bucket: str = Field(
        "fileproc-functions",
        description="Bucket holding deployed functions' packages (`fileproc functions deploy`), read by every host.",
    )
    alias_seconds: float = Field(
        2.0, ge=0,
        description="How long a worker trusts what a deployed function's alias (`live`) pointed at: a deploy or "
        "rollback reaches running workers within this.",
    )
    credentials: Literal["assume-role", "keys", "shared"] = Field(
        "assume-role",
        description="The store credentials a deployed function gets (storage.backend = s3): `assume-role`, its "
        "own from the store's STS, limited to reading the buckets its pipelines read and writing where their "
        "outputs go; `keys`, functions.access_key and functions.secret_key (an account scoped on the store, "
        "for stores without STS); `shared`, fileproc's own keys (every bucket, other functions' code included).",
    )
    sts_endpoint: str = Field(
        "", description="Where `assume-role` asks for credentials, as a URL; empty: the store's endpoint (MinIO, "
        "Ceph RGW). AWS: `https://sts.amazonaws.com`."
    )
    role_arn: str = Field(
        "", description="The role `assume-role` assumes (AWS and Ceph RGW need one; MinIO takes none)."
    )
    access_key: SecretStr = Field(
        SecretStr(""), description="The access key deployed functions share with functions.credentials = keys. "
        "Never logged."
    )
    secret_key: SecretStr = Field(
        SecretStr(""), description="Its secret key (functions.credentials = keys). Never logged."
    )


class UsageSettings(Section):
    price_per_request: float = Field(
        0.0000002, ge=0, description="Cost of one invocation in `fileproc usage` (default: AWS Lambda's x86 price, "
        "$0.20 per million requests)."
    )
    price_per_gb_second: float = Field(
        0.0000166667, ge=0, description="Cost of one GB-second in `fileproc usage` (default: AWS Lambda's x86 "
        "price, $0.0000166667)."
    )


class WatcherSettings(Section):
    enabled: bool = Field(
        True, description="With local storage, watch the bucket folders for dropped files (`fileproc serve`)."
    )
    settle_seconds: float = Field(
        1.0, ge=0, description="A dropped file counts as complete once it has not changed for this long."
    )


class MetricsSettings(Section):
    token: SecretStr = Field(
        SecretStr(""),
        description="Bearer token `GET /metrics` takes besides the admin token (give it to Prometheus, which then "
        "never holds the admin token). Empty: only the admin token.",
    )


class SearchSettings(Section):
    dir: Path | None = Field(
        None, description="This host's search index (a folder); default `data_dir/search`. Never shared between hosts."
    )
    enabled: bool = Field(
        True, description="Keep this host's index up to date: `fileproc serve` and `fileproc api` run the indexer."
    )
    interval: float = Field(
        1.0, gt=0, description="How often the indexer goes over the recorded outputs for new documents, in seconds "
        "(between passes it looks at the newest output id every 0.25 s, and passes at once when it changed)."
    )
    batch: int = Field(500, ge=1, description="Most documents the indexer applies in one commit.")
    hold: float = Field(
        2.0, ge=0, description="While documents keep arriving, the longest a staged one waits for its commit (s)."
    )


class Settings(Section):
    """Everything fileproc can be told. See the README for each field."""

    data_dir: Path = Field(
        Path("fileproc-data"),
        description="Where the embedded default keeps buckets, state.db, the broker's data and scratch files.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Logging level: DEBUG, INFO, WARNING, ERROR."
    )
    storage: StorageSettings = Field(default_factory=StorageSettings)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    reconcile: ReconcileSettings = Field(default_factory=ReconcileSettings)
    functions: FunctionSettings = Field(default_factory=FunctionSettings)
    watcher: WatcherSettings = Field(default_factory=WatcherSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    search: SearchSettings = Field(default_factory=SearchSettings)
    usage: UsageSettings = Field(default_factory=UsageSettings)
    pipelines: list[Pipeline] = Field(
        default_factory=list, description="Which objects go through which functions (config file only)."
    )
    streams: list[StreamMapping] = Field(
        default_factory=list, description="Streams of records mapped to functions (config file only)."
    )
    schedules: list[Schedule] = Field(
        default_factory=list, description="Functions run on a schedule (config file only)."
    )
    config_file: Path | None = Field(None, description="The file these settings were read from (set by the loader).")

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_in_capitals(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value  # `log_level = "debug"` is fine too

    @property
    def buckets_dir(self) -> Path:
        return self.data_dir / "buckets"

    @property
    def search_dir(self) -> Path:
        return self.search.dir or self.data_dir / "search"

    @property
    def database_url(self) -> str:
        url = self.database.url.get_secret_value()
        return url or f"sqlite:///{(self.data_dir / 'state.db').resolve()}"

    @property
    def embedded_broker(self) -> bool:
        return not self.broker.url.get_secret_value()


DEMO_PIPELINE: dict[str, Any] = {
    "name": "thumbnails",
    "match": {"bucket": "uploads", "suffix": [".jpg", ".jpeg", ".png", ".webp", ".gif"]},
    "steps": [{"function": "thumbnail", "params": {"sizes": [256], "format": "webp"}}],
    "output": {"bucket": "derived", "key": "thumbnails/{key}/{name}"},
}


def env_name(section: str | None, name: str) -> str:
    """The environment variable that sets ``[section] name``."""
    parts = ["FILEPROC", section, name] if section else ["FILEPROC", name]
    return "_".join(parts).upper()


def setting_names() -> list[tuple[str, str, str]]:
    """(dotted name, environment variable, description) of every setting."""
    rows = []
    for name, info in Settings.model_fields.items():
        if name in {"pipelines", "streams", "schedules", "config_file"}:
            continue
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, Section):
            for sub, subinfo in annotation.model_fields.items():
                rows.append((f"{name}.{sub}", env_name(name, sub), subinfo.description or ""))
        else:
            rows.append((name, env_name(None, name), info.description or ""))
    return rows


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for dotted, var, _ in setting_names():
        if var not in env:
            continue
        raw: Any = env[var]
        if dotted in {"worker.queues", "functions.paths"}:
            raw = [part.strip() for part in raw.split(",") if part.strip()]
        section, _, name = dotted.rpartition(".")
        (values.setdefault(section, {}) if section else values)[name] = raw
    return values


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text) or {} if path.suffix in {".yaml", ".yml"} else tomllib.loads(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        kind = "YAML" if path.suffix in {".yaml", ".yml"} else "TOML"
        raise ConfigError(f"{path}: not valid {kind}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a table of settings")
    return data


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        lines.append(f"{where}: {item['msg']}")
    return "; ".join(lines)


LOCAL_CONFIG = Path("fileproc.toml")
"""The config file a command reads from the folder it runs in, when neither --config nor FILEPROC_CONFIG names one."""


def find_config(given: Path | str | None = None, env: Mapping[str, str] | None = None,
                folder: Path | None = None) -> Path | None:
    """The config file a command uses: ``given`` (--config), else ``FILEPROC_CONFIG``, else ``./fileproc.toml``.

    None when there is none (the embedded demo). The local file is what
    ``fileproc init`` writes, so a user who made one and edited it gets it
    without repeating ``--config`` on every command.
    """
    env = os.environ if env is None else env
    if given:
        return Path(given)
    if env.get("FILEPROC_CONFIG"):
        return Path(env["FILEPROC_CONFIG"])
    local = (folder or Path()) / LOCAL_CONFIG
    return local if local.is_file() else None


def load_settings(config: Path | str | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read the settings from ``config`` (or ``FILEPROC_CONFIG``) and the environment."""
    env = os.environ if env is None else env
    path = Path(config) if config else (Path(env["FILEPROC_CONFIG"]) if env.get("FILEPROC_CONFIG") else None)
    data = _read_file(path) if path else {}
    data = _merge(data, _from_env(env))
    if path is None or "pipelines" not in data:
        data.setdefault("pipelines", [DEMO_PIPELINE] if path is None else [])
    data["config_file"] = path
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        source = f"{path}: " if path else ""
        raise ConfigError(f"{source}{_describe(exc)}") from exc
    _check(settings)
    return settings


def _check(settings: Settings) -> None:
    if settings.storage.backend == "s3" and not settings.storage.endpoint:
        raise ConfigError("storage.endpoint: required when storage.backend is s3")
    functions = settings.functions
    if settings.storage.backend == "s3" and functions.credentials == "keys" and not (
            functions.access_key.get_secret_value() and functions.secret_key.get_secret_value()):
        raise ConfigError("functions.access_key: required, with functions.secret_key, when functions.credentials "
                          "is keys")
    if functions.access_key.get_secret_value() and functions.credentials != "keys":
        raise ConfigError(f"functions.access_key: given, but functions.credentials is {functions.credentials}: "
                          "set it to keys to use it")
    if functions.access_key.get_secret_value() == settings.storage.access_key.get_secret_value() != "":
        raise ConfigError("functions.access_key: must not be fileproc's own (storage.access_key); "
                          "functions.credentials = shared gives functions fileproc's keys, knowingly")
    webhook, admin = settings.api.webhook_token.get_secret_value(), settings.api.admin_token.get_secret_value()
    if webhook and webhook == admin:
        raise ConfigError("api.admin_token: must differ from api.webhook_token")
    for what, items in (("pipelines", settings.pipelines), ("streams", settings.streams),
                        ("schedules", settings.schedules)):
        names = [item.name for item in items]
        duplicated = sorted({name for name in names if names.count(name) > 1})
        if duplicated:
            raise ConfigError(f"{what}: duplicate name {duplicated[0]!r}")
