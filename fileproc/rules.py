"""Pipelines: which objects go through which functions, and where results go.

A pipeline is declared in the config file::

    [[pipelines]]
    name = "thumbnails"
    match = { bucket = "uploads", suffix = [".jpg", ".png"], events = ["s3:ObjectCreated:*"] }
    steps = [{ function = "thumbnail", params = { sizes = [256] } }]
    output = { bucket = "derived", key = "thumbnails/{key}/{name}" }

Matching is pure: :func:`match` takes an event and the pipelines and returns
the ones that apply, so ``fileproc match`` and dispatch share it.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
import string
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fileproc.events import ObjectEvent

DEFAULT_EVENTS = ["s3:ObjectCreated:*"]
PROVENANCE_PIPELINE = "fileproc-pipeline"
"""Metadata key naming the pipeline that wrote an object."""


class Match(BaseModel):
    """Which objects a pipeline takes. Every given condition must hold."""

    model_config = ConfigDict(extra="forbid")

    bucket: str = Field(description="Bucket name, or a glob such as `uploads-*`.")
    prefix: str = ""
    suffix: list[str] = Field(default_factory=list, description="One or several key endings (case-insensitive).")
    glob: str = Field("", description="Glob on the whole key: `photos/**/*.jpg` (`*` stays in a folder, `**` crosses).")
    events: list[str] = Field(default_factory=lambda: list(DEFAULT_EVENTS))
    content_type: list[str] = Field(default_factory=list, description="Content types, `image/*` allowed.")
    min_size: int = Field(0, ge=0)
    max_size: int | None = Field(None, ge=0)

    @field_validator("suffix", "events", "content_type", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("events")
    @classmethod
    def _event_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not name.startswith("s3:"):
                raise ValueError(f"event type {name!r} must look like s3:ObjectCreated:*")
        return value


class Step(BaseModel):
    """One function call. Unset limits fall back to the function's own defaults.

    ``function`` names a registered function; ``handler = "module:function"``
    names a plain ``handler(event, context)`` instead (no decorator needed),
    and is then also the function's name unless ``function`` is given.
    """

    model_config = ConfigDict(extra="forbid")

    function: str = ""
    handler: str | None = Field(None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    params: dict[str, Any] = Field(default_factory=dict)
    queue: str | None = None
    timeout: float | None = Field(None, gt=0)
    memory_mb: int | None = Field(None, gt=0)
    retries: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _named(self) -> Step:
        if not self.function:
            if not self.handler:
                raise ValueError("a step needs `function` (a registered name) or `handler` (module:function)")
            self.function = self.handler
        return self


class Output(BaseModel):
    """Where a pipeline's results go. ``key`` is a template; see :func:`render_key`."""

    model_config = ConfigDict(extra="forbid")

    bucket: str = Field(description="Bucket for the outputs; `{bucket}` means the source bucket.")
    key: str = Field("{pipeline}/{key}/{name}")

    @field_validator("key")
    @classmethod
    def _known_fields(cls, value: str) -> str:
        for _, field, _, _ in string.Formatter().parse(value):
            if field is not None and field not in TEMPLATE_FIELDS:
                raise ValueError(f"unknown placeholder {{{field}}}; known: {', '.join(sorted(TEMPLATE_FIELDS))}")
        if "{name}" not in value:
            raise ValueError("the key template must contain {name} so outputs do not overwrite each other")
        return value


REMOVAL_EXAMPLE = "s3:ObjectRemoved:Delete"


class Pipeline(BaseModel):
    """``on_delete``: what becomes of the outputs when their source goes away.

    ``keep`` (the default) leaves them. ``remove-outputs`` makes them follow
    their source: when the object is deleted (``s3:ObjectRemoved:*``) a job
    removes what the pipeline made from it, and when a new version has been
    processed, what earlier runs made that this run no longer makes (a size
    dropped from the params, say) is removed. An output that something else
    has overwritten since is left alone. Each job records what it removed.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    match: Match
    steps: list[Step] = Field(min_length=1)
    output: Output
    on_delete: Literal["keep", "remove-outputs"] = "keep"

    @model_validator(mode="after")
    def _removals_handled_once(self) -> Pipeline:
        if self.on_delete == "remove-outputs" and any(event_matches(p, REMOVAL_EXAMPLE) for p in self.match.events):
            raise ValueError("on_delete = 'remove-outputs' is for pipelines whose steps take new objects; this one's "
                             "match.events take removals, so its steps handle them")
        return self

    @property
    def removes_outputs(self) -> bool:
        return self.on_delete == "remove-outputs"


TEMPLATE_FIELDS = {"bucket", "key", "dirname", "basename", "stem", "ext", "name", "pipeline"}


def render_key(template: str, *, pipeline: str, bucket: str, key: str, name: str) -> str:
    """The output key for output ``name`` of source ``bucket/key``.

    >>> render_key("{pipeline}/{dirname}/{stem}-{name}", pipeline="p", bucket="b", key="a/cat.jpg", name="256.webp")
    'p/a/cat-256.webp'
    """
    dirname, basename = posixpath.split(key)
    stem, ext = posixpath.splitext(basename)
    rendered = template.format(
        bucket=bucket, key=key, dirname=dirname, basename=basename, stem=stem,
        ext=ext.lstrip("."), name=name, pipeline=pipeline,
    )
    return re.sub(r"/{2,}", "/", rendered).lstrip("/")


def _glob_regex(pattern: str) -> re.Pattern[str]:
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def event_matches(pattern: str, event_name: str) -> bool:
    """``s3:ObjectCreated:*`` matches ``s3:ObjectCreated:Put`` (and ``ObjectCreated:Put``)."""
    name = event_name if event_name.startswith("s3:") else f"s3:{event_name}"
    return fnmatch.fnmatchcase(name, pattern)


def matches(pipeline: Pipeline, event: ObjectEvent) -> bool:
    """Whether ``event`` goes through ``pipeline``."""
    return refusal(pipeline, event) is None


def refusal(pipeline: Pipeline, event: ObjectEvent) -> str | None:
    """The first of ``pipeline``'s rules that ``event`` fails, in words; None when it matches.

    Example (the demo pipeline)::

        refusal(thumbnails, ObjectEvent("uploads", "notes.txt"))
        # "match.suffix: 'notes.txt' does not end with .jpg or .jpeg or ..."
    """
    m = pipeline.match
    if event.key.endswith("/"):
        return "the key ends with '/': a folder placeholder, never processed"
    if not fnmatch.fnmatchcase(event.bucket, m.bucket):
        return f"match.bucket: {event.bucket!r} is not {m.bucket!r}"
    if not any(event_matches(pattern, event.event_name) for pattern in m.events) and not (
            pipeline.removes_outputs and event.is_removal):  # (its job removes the outputs)
        return f"match.events: {event.event_name} is not one of {', '.join(m.events)}"
    if not event.key.startswith(m.prefix):
        return f"match.prefix: {event.key!r} does not start with {m.prefix!r}"
    if m.suffix and not event.key.lower().endswith(tuple(s.lower() for s in m.suffix)):
        return f"match.suffix: {event.key!r} does not end with {' or '.join(m.suffix)}"
    if m.glob and not _glob_regex(m.glob).match(event.key):
        return f"match.glob: {event.key!r} does not match {m.glob!r}"
    if m.content_type and event.content_type is not None and not any(
        fnmatch.fnmatchcase(event.content_type, ct) for ct in m.content_type
    ):
        return f"match.content_type: {event.content_type} is not {' or '.join(m.content_type)}"
    if m.max_size is not None and event.size is not None and event.size > m.max_size:
        return f"match.max_size: {event.size} bytes is over {m.max_size}"
    if event.size is not None and event.size < m.min_size:
        return f"match.min_size: {event.size} bytes is under {m.min_size}"
    return None


def match(pipelines: list[Pipeline], event: ObjectEvent) -> list[Pipeline]:
    """The pipelines ``event`` goes through, in config order.

    An object that carries provenance metadata naming a pipeline is never fed
    back to that pipeline, so outputs written into a watched bucket cannot loop.
    """
    made_by = event.metadata.get(PROVENANCE_PIPELINE)
    return [p for p in pipelines if p.name != made_by and matches(p, event)]


def verdicts(pipelines: list[Pipeline], event: ObjectEvent) -> list[tuple[Pipeline, str | None]]:
    """Each pipeline with why ``event`` does not go through it (None: it does), as :func:`match` decides."""
    made_by = event.metadata.get(PROVENANCE_PIPELINE)
    return [(p, f"written by this pipeline ({PROVENANCE_PIPELINE} metadata): never fed back to it"
             if p.name == made_by else refusal(p, event)) for p in pipelines]
