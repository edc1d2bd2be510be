"""One object, one ObjectEvent: how every source describes what it found.

Every source (webhook, folder watcher, ``fileproc put``, backfill, the
reconciler) builds its events with :func:`event_for`, checks names with
:func:`name_problem` and fills what a notification left out with
:func:`complete`, so an object is described the same way however it arrived
and a ``content_type`` or size rule decides the same way.

Example::

    info = storage.head("uploads", "cat.jpg")
    event = event_for("uploads", "cat.jpg", info, source="watcher")
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Protocol

from fileproc.errors import ObjectNotFound
from fileproc.events import ObjectEvent
from fileproc.rules import Pipeline, match
from fileproc.storage import DEFAULT_CONTENT_TYPE, MAX_KEY_BYTES, InvalidName, ObjectInfo, Storage, check_bucket_name

log = logging.getLogger(__name__)


class Submit(Protocol):
    """The one path events take into jobs: ``service.submit``, :func:`fileproc.dispatch.submit_many` bound to a service.

    It records the events durably (a job for each pipeline one matches) and
    raises if it could not. ``completed``: the caller filled in what a
    notification may leave out (:func:`complete`); ``send=False``: the
    caller sends the new jobs' first steps itself, or leaves them to the outbox.
    """

    def __call__(self, events: Iterable[ObjectEvent], *, send: bool = True, completed: bool = False) -> list[Any]:
        ...


CREATED = "s3:ObjectCreated:Put"


def event_for(
    bucket: str,
    key: str,
    info: ObjectInfo | None = None,
    *,
    event_name: str = CREATED,
    source: str,
    size: int | None = None,
    etag: str | None = None,
    version_id: str | None = None,
    sequencer: str | None = None,
    time: datetime | None = None,
    content_type: str | None = None,
    metadata: Mapping[str, str] | None = None,
    listed: bool = False,
) -> ObjectEvent:
    """The ObjectEvent for ``bucket/key``: what the source says, else what ``info`` (a HEAD) says.

    ``listed``: ``info`` comes from a bucket listing, which carries no content
    type, metadata or version id (see :mod:`fileproc.storage`); those stay
    unknown (None) rather than taking the listing's placeholders.
    """
    fields: dict[str, object] = {}
    if info is not None:
        fields = {"size": info.size, "etag": info.etag, "time": info.last_modified}
        if not listed:
            fields |= {"version_id": info.version_id, "content_type": info.content_type,
                       "metadata": dict(info.metadata)}
    given = {"size": size, "etag": etag, "version_id": version_id, "time": time, "content_type": content_type,
             "metadata": dict(metadata) if metadata else None}
    fields |= {name: value for name, value in given.items() if value is not None}
    if listed and fields.get("content_type") == DEFAULT_CONTENT_TYPE:
        fields.pop("content_type")
    return ObjectEvent(bucket=bucket, key=key, event_name=event_name, sequencer=sequencer or None, source=source,
                       **{k: v for k, v in fields.items() if v is not None})  # type: ignore[arg-type]


def name_problem(bucket: str, key: str) -> str | None:
    """Why ``bucket/key`` cannot be an object fileproc processes, or None when it can.

    Refused for good (never retried): an invalid bucket name, an empty key, a
    NUL, more than 1,024 bytes of UTF-8, a leading ``/``, or an empty, ``.`` or
    ``..`` segment. A key ending in ``/`` (a folder placeholder) passes: no
    pipeline takes it.
    """
    problem = _bucket_problem(bucket)
    if problem:
        return problem
    if not key:
        return "empty object key"
    if "\0" in key:
        return f"object key {key[:60]!r} contains NUL"
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        return f"object key {key[:60]!r} is not valid UTF-8"
    if size > MAX_KEY_BYTES:
        return f"object key {key[:40]!r}... is longer than {MAX_KEY_BYTES} bytes ({size})"
    if key.startswith("/"):
        return f"object key {key[:60]!r} is an absolute path"
    segments = key.removesuffix("/").split("/")
    if any(segment in ("", ".", "..") for segment in segments):
        return f"object key {key[:60]!r} has an empty, '.' or '..' segment"
    return None


def candidates(pipelines: list[Pipeline], event: ObjectEvent) -> list[Pipeline]:
    """The pipelines ``event`` may go through once completed (a size of 0 counts as unknown)."""
    return match(pipelines, dataclasses.replace(event, size=None) if event.size == 0 else event)


@functools.lru_cache(maxsize=1024)
def _bucket_problem(bucket: str) -> str | None:
    # Cached: a receiver sees the same few buckets thousands of times a second.
    try:
        check_bucket_name(bucket)
    except InvalidName as exc:
        return str(exc)
    return None


def needs_head(event: ObjectEvent, pipelines: list[Pipeline], found: list[Pipeline] | None = None) -> bool:
    """Whether rules or deduplication would decide on a guess without a HEAD of the object.

    Only for creation events a pipeline could take (``found``: their
    :func:`candidates`, if known): a missing eTag (the duplicate check keys
    on it), a size of 0 (versitygw sends 0 for multipart and copy events), or
    no content type when a candidate pipeline matches on one.
    """
    if not event.is_creation or event.key.endswith("/"):
        return False
    unknown_size = event.size == 0
    if event.etag is not None and not unknown_size and event.content_type is not None:
        return False
    found = candidates(pipelines, event) if found is None else found
    if not found:
        return False
    return (event.etag is None or unknown_size
            or (event.content_type is None and any(p.match.content_type for p in found)))


def complete(storage: Storage, pipelines: list[Pipeline], events: Iterable[ObjectEvent]) -> list[ObjectEvent]:
    """``events`` with what a notification left out filled in from a HEAD (see :func:`needs_head`).

    An object gone by then is dropped, with the reason logged: its deletion
    has (or will have) its own event. Other storage errors (the store is down)
    propagate: the caller decides whether to retry.
    """
    out = []
    for event in events:
        if not needs_head(event, pipelines):
            out.append(event)
            continue
        try:
            info = storage.head(event.bucket, event.key, event.version_id)
        except ObjectNotFound:
            log.info("dropped the %s event for %s/%s: the object is gone (no eTag or size to go by)",
                     event.event_name, event.bucket, event.key)
            continue
        out.append(event_for(event.bucket, event.key, info, event_name=event.event_name, source=event.source,
                             version_id=event.version_id, sequencer=event.sequencer, time=event.time))
    return out


__all__ = ["CREATED", "candidates", "complete", "event_for", "name_problem", "needs_head"]
