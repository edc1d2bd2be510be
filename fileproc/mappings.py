"""Event source mappings and schedules as configured: what runs a function besides an upload.

``[[streams]]`` maps a stream of records (Kafka, Redis Streams, NATS
JetStream, or a stream in the embedded broker) to a function, with Lambda's
settings and defaults for event source mappings; ``[[schedules]]`` runs a
function on EventBridge's ``rate(...)`` or ``cron(...)`` expressions. Plain
models, validated at start like pipelines; the machinery is
:mod:`fileproc.streams` and :mod:`fileproc.schedules`.

A stream's ``source`` is one of::

    kafka://HOST:PORT[,HOST:PORT...]/TOPIC
    redis://[:PASSWORD@]HOST:PORT/DB/STREAM   (rediss:// with TLS)
    redis-list://[:PASSWORD@]HOST:PORT/DB/KEY (a Redis list used as a queue, e.g. MinIO's notify_redis; rediss-list://)
    nats://HOST:PORT/SUBJECT                  (a JetStream stream holding SUBJECT)
    amqp://USER:PASS@HOST:PORT/[VHOST/]QUEUE  (a RabbitMQ queue, e.g. MinIO's notify_amqp; amqps://; optional
                                              ?exchange=NAME&exchange_type=TYPE&routing_key=KEY binds it)
    embedded:NAME                             (a Redis stream in fileproc serve's embedded broker)
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from fileproc.cron import parse as parse_schedule

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
ENGINES = ("kafka", "redis", "rediss", "redis-list", "rediss-list", "nats", "amqp", "amqps", "embedded")
AMQP_OPTIONS = ("exchange", "exchange_type", "routing_key")  # what an amqp:// source's query may say


def _named(value: str) -> str:
    if not NAME.match(value):
        raise ValueError("use letters, digits, '.', '_' and '-' (up to 64), starting with a letter or digit")
    return value


Name = Annotated[str, AfterValidator(_named)]
"""A mapping's or a schedule's name."""


class StreamMapping(BaseModel):
    """One ``[[streams]]`` entry: a stream's records, in batches, to one function (Lambda's event source mapping)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Name = Field(description="The mapping's name: letters, digits, '.', '_', '-'.")
    source: str = Field(description="kafka://BROKERS/TOPIC | redis://HOST:PORT/DB/STREAM | nats://HOST:PORT/SUBJECT "
                                    "| redis-list://HOST:PORT/DB/KEY | amqp://USER:PASS@HOST:PORT/VHOST/QUEUE "
                                    "| embedded:NAME")
    function: str = Field("", description="The function each batch runs (registered or deployed; NAME[:QUALIFIER]); "
                                         "none for kind = notifications.")
    kind: Literal["records", "notifications"] = Field(
        "records", description="records: the handler gets each batch; notifications: each record is a bucket "
                               "notification submitted like the webhook's.")
    enabled: bool = True
    batch_size: int = Field(100, ge=1, le=10_000, description="Most records in one invocation (Lambda: 100).")
    batch_window: float = Field(0.0, ge=0, le=300, description="Seconds to wait for a fuller batch (Lambda: 0).")
    starting_position: Literal["trim_horizon", "latest", "at_timestamp"] = "trim_horizon"
    starting_timestamp: datetime | None = None
    parallelization_factor: int = Field(1, ge=1, le=10, description="Batches of one partition at once, "
                                                                     "keeping each key's order.")
    max_retries: int = Field(-1, ge=-1, le=10_000, description="Retries of a failing batch; -1: until its records "
                                                                "expire (max_record_age).")
    max_record_age: float = Field(-1, ge=-1, le=604_800, description="Seconds after which a failing record is "
                                                                      "given up; -1: never.")
    bisect_on_error: bool = False
    report_batch_item_failures: bool = False
    on_failure: str | None = Field(None, description="Where a given-up batch's record goes: an http(s) URL; "
                                                     "it is kept as a dead letter in any case.")
    filter: list[dict[str, Any]] = Field(default_factory=list, description="Lambda's event filter patterns; a "
                                                                           "record matching none is skipped.")
    tumbling_window: float = Field(0, ge=0, le=900, description="Seconds of Lambda's tumbling windows (0: none).")
    group: str | None = Field(None, description="The consumer group (default: fileproc-NAME).")

    @field_validator("source")
    @classmethod
    def _source(cls, value: str) -> str:
        engine, _, rest = value.partition(":")
        if engine not in ENGINES:
            raise ValueError(f"unknown stream source {value!r}: use {', '.join(e + '://' for e in ENGINES[:-1])} "
                             "or embedded:NAME")
        if engine == "embedded":
            if not NAME.match(rest):
                raise ValueError("embedded:NAME takes a name of letters, digits, '.', '_' and '-'")
            return value
        parts = urlsplit(value)
        path = [p for p in parts.path.split("/") if p]
        if not parts.hostname:
            raise ValueError(f"{value!r} names no host")
        if engine.startswith("redis") and (len(path) != 2 or not path[0].isdigit()):
            raise ValueError(f"{value!r}: use {engine}://HOST:PORT/DB/{'KEY' if 'list' in engine else 'STREAM'}")
        if engine in ("kafka", "nats") and len(path) != 1:
            raise ValueError(f"{value!r}: use {engine}://HOST:PORT/{'TOPIC' if engine == 'kafka' else 'SUBJECT'}")
        if engine.startswith("amqp") and (not 1 <= len(path) <= 2
                                          or set(parse_qs(parts.query)) - set(AMQP_OPTIONS)):
            raise ValueError(f"{value!r}: use {engine}://USER:PASS@HOST:PORT/[VHOST/]QUEUE, optionally with "
                             f"?{'&'.join(o + '=...' for o in AMQP_OPTIONS)}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> StreamMapping:
        if self.kind == "records" and not self.function:
            raise ValueError("function: required (the function each batch runs)")
        if self.kind == "notifications" and self.function:
            raise ValueError("function: a notifications mapping runs the pipelines its events match, not a function")
        if self.starting_position == "at_timestamp" and self.starting_timestamp is None:
            raise ValueError("starting_position = 'at_timestamp' needs starting_timestamp")
        return self

    @property
    def engine(self) -> str:
        """kafka, redis, nats, amqp or embedded (rediss and the redis-list schemes count as redis, amqps as amqp)."""
        engine = self.source.partition(":")[0]
        return "redis" if engine.startswith("redis") else "amqp" if engine == "amqps" else engine

    @property
    def shown_source(self) -> str:
        """``source`` with its password masked: what commands, the API and logs show."""
        parts = urlsplit(self.source)
        if not parts.password:
            return self.source
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return parts._replace(netloc=netloc).geturl()

    @property
    def consumer_group(self) -> str:
        return self.group or f"fileproc-{self.name}"


class Schedule(BaseModel):
    """One ``[[schedules]]`` entry: a function run on EventBridge's schedule expression."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Name = Field(description="The schedule's name (EventBridge's rule name).")
    function: str = Field(description="The function each tick runs (NAME[:QUALIFIER]).")
    expression: str = Field(description="rate(5 minutes) or cron(0 12 * * ? *), in EventBridge's syntax (UTC).")
    input: dict[str, Any] | None = Field(None, description="The event instead of EventBridge's Scheduled Event.")
    enabled: bool = True

    @field_validator("expression")
    @classmethod
    def _expression(cls, value: str) -> str:
        parse_schedule(value)  # ValueError: what is wrong with it
        return value.strip()


__all__ = ["AMQP_OPTIONS", "ENGINES", "Schedule", "StreamMapping"]
