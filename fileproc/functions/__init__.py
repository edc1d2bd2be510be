"""The function interface: ``handler(event, context)``, as on AWS Lambda.

A function is a plain callable registered with :func:`function`::

    from fileproc import function

    @function("shout", timeout=30, memory_mb=256)
    def handler(event, context):
        key = event["Records"][0]["s3"]["object"]["key"]      # URL-encoded, as on AWS
        with context.input.open() as src:
            data = src.read().upper()
        context.output.put("shout.txt", data, content_type="text/plain")

``event`` is the AWS S3 event (``{"Records": [record]}``), so a handler written
for Lambda's S3 trigger runs unchanged. ``context`` carries Lambda's attributes
(``aws_request_id``, ``function_name``, ``memory_limit_in_mb``,
``get_remaining_time_in_millis()``) and fileproc's own: ``params``, ``input``,
``output``, ``storage``, ``logger``.

Functions are found by the service's registry (:mod:`fileproc.functions.registry`):
entry points, the ``functions.paths`` folders, and plain handlers a pipeline
step names (``handler = "module:function"``).

A handler SHALL write its results through ``context.output`` (so they are
recorded, carry provenance and appear atomically) and SHALL raise
``InvalidInput`` for input it cannot process. It MAY raise ``TransientError``
to ask for a retry; any other exception is retried up to ``retries`` times.
The built-ins in ``workers/`` use this interface and nothing else.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from fileproc.events import ObjectEvent
from fileproc.functions.batches import ACCOUNT_ID
from fileproc.storage import ObjectInfo, PutSource, Storage

if TYPE_CHECKING:  # pydantic is imported by whoever declares a params model, not here
    from pydantic import BaseModel

Handler = Callable[[dict[str, Any], "Context"], Any]

PROGRESS_FILE = ".fileproc-progress.json"
"""Where :meth:`Context.report_progress` leaves the latest progress, in the step's scratch folder;
the worker running the step copies it to the attempt about once a second."""

PROGRESS_INTERVAL = 0.5
"""Seconds between two progress reports that are written (more frequent ones are dropped)."""

SPEC_ATTRIBUTE = "__fileproc_function__"
"""Where :func:`function` leaves a handler's :class:`FunctionSpec` for a registry to read."""


@dataclass(frozen=True)
class FunctionSpec:
    """A function and its defaults, as a registry knows it.

    ``params`` is the pydantic model the step's params must satisfy (``None``:
    any table of params is passed on as it is); ``source`` says where the
    function came from, for messages; ``kind`` names its
    :class:`~fileproc.functions.kinds.FunctionKind` (how its runners start,
    what its steps do at their ends).
    """

    name: str
    handler: Handler
    queue: str
    timeout: float = 60.0
    memory_mb: int = 1024
    retries: int = 2
    params: type[BaseModel] | None = None
    source: str = ""
    version: str = "$LATEST"  # a deployed function's version number
    concurrency: int | None = None  # a deployed function's reserved concurrency (steps at once, everywhere)
    kind: str = "registered"  # its kind of function (fileproc.functions.kinds): how it runs, what its steps do

    @property
    def module(self) -> str:
        return getattr(self.handler, "__module__", "?")


def function(
    name: str,
    *,
    queue: str | None = None,
    timeout: float = 60.0,
    memory_mb: int = 1024,
    retries: int = 2,
    params: type[BaseModel] | None = None,
) -> Callable[[Handler], Handler]:
    """Declare ``handler`` as the function ``name``, with its defaults.

    The decorator only attaches a :class:`FunctionSpec` to the handler; the
    handler is registered by the service that finds it (in a module of
    ``functions.paths``, or through an entry point), so two services never
    share what they loaded.

    ``queue`` defaults to the function's name, so each function has its own
    Celery queue and a long transcode never delays a thumbnail. ``timeout`` is
    in seconds; ``memory_mb`` is the most the step may allocate beyond the
    worker's own footprint; ``retries`` counts re-runs after a failure that
    may pass (never after ``InvalidInput`` or a timeout). ``params`` is a
    pydantic model: every pipeline step's params are validated against it when
    the service starts, so a typo stops the start instead of failing jobs::

        class ShoutParams(BaseModel):
            model_config = ConfigDict(extra="forbid")
            times: int = 1

        @function("shout", params=ShoutParams)
        def handler(event, context):
            times = context.params["times"]     # validated, default filled in
    """

    def declare(handler: Handler) -> Handler:
        spec = FunctionSpec(name, handler, queue or name, timeout, memory_mb, retries, params)
        setattr(handler, SPEC_ATTRIBUTE, spec)
        return handler

    return declare


def declared_spec(obj: object) -> FunctionSpec | None:
    """The spec :func:`function` attached to ``obj``, if any."""
    spec = getattr(obj, SPEC_ATTRIBUTE, None)
    return spec if isinstance(spec, FunctionSpec) else None


class InputObject:
    """The object that triggered the step: stream it, or ask for a local path.

    ``opened``: a stream of the object the runtime already has (the answer
    to its one conditional read, :func:`fileproc.runtime.invoke.open_source`);
    the first ``open()`` or ``path`` uses it instead of asking the store again,
    and :meth:`close` drops it if the handler never read its input.
    """

    def __init__(self, storage: Storage, info: ObjectInfo, scratch: Path, opened: IO[bytes] | None = None) -> None:
        self._storage = storage
        self.info = info
        self._scratch = scratch
        self._path: Path | None = None
        self._opened = opened
        self.bytes_read = 0

    @property
    def bucket(self) -> str:
        return self.info.bucket

    @property
    def key(self) -> str:
        return self.info.key

    @property
    def size(self) -> int:
        return self.info.size

    @property
    def content_type(self) -> str:
        return self.info.content_type

    def open(self) -> IO[bytes]:
        """A streaming reader of the object."""
        self.bytes_read += self.info.size
        opened, self._opened = self._opened, None
        if opened is not None:
            return opened
        return self._storage.open(self.info.bucket, self.info.key)

    @property
    def path(self) -> Path:
        """A local file with the object's bytes (downloaded once, on first use)."""
        if self._path is None:
            suffix = Path(self.info.key).suffix
            self._scratch.mkdir(parents=True, exist_ok=True)
            target = self._scratch / f"input{suffix}"
            opened, self._opened = self._opened, None
            if opened is None:
                self._storage.download(self.info.bucket, self.info.key, target)
            else:
                with opened, open(target, "wb") as out:
                    shutil.copyfileobj(opened, out, 1024 * 1024)
            self.bytes_read += self.info.size
            self._path = target
        return self._path

    def close(self) -> None:
        """Drop the stream the runtime opened, if the handler never used it (called when the step ends)."""
        opened, self._opened = self._opened, None
        if opened is not None:
            opened.close()


@dataclass(frozen=True)
class OutputRef:
    bucket: str
    key: str
    size: int
    etag: str
    content_type: str


class OutputWriter:
    """Writes a step's results under the pipeline's output location.

    Each output gets provenance metadata (source bucket, key, etag, pipeline)
    and is recorded for the job; the store makes each write atomic.
    """

    def __init__(
        self,
        storage: Storage,
        bucket: str,
        key_for: Callable[[str], str],
        provenance: dict[str, str],
    ) -> None:
        self._storage = storage
        self.bucket = bucket
        self._key_for = key_for
        self._provenance = provenance
        self.written: list[OutputRef] = []

    def key_for(self, name: str) -> str:
        """The key output ``name`` will be written to."""
        return self._key_for(name)

    def put(self, name: str, source: PutSource, *, content_type: str | None = None,
            metadata: dict[str, str] | None = None) -> OutputRef:
        key = self.key_for(name)
        info = self._storage.put(
            self.bucket, key, source,
            content_type=content_type,
            metadata={**(metadata or {}), **self._provenance},
        )
        ref = OutputRef(self.bucket, key, info.size, info.etag, info.content_type)
        self.written.append(ref)
        return ref


@dataclass(frozen=True)
class CognitoIdentity:
    """``context.identity``, as Lambda's Python runtime has it (empty for an S3 trigger)."""

    cognito_identity_id: str | None = None
    cognito_identity_pool_id: str | None = None




@dataclass
class Context:
    """What a handler gets besides the event. Lambda's attributes come first, with Lambda's types.

    As in Lambda's Python runtime: ``memory_limit_in_mb`` is a str,
    ``invoked_function_arn`` has 7 parts (8 with a version or alias),
    ``identity`` and ``client_context`` are None-valued for an S3 trigger.
    """

    aws_request_id: str
    function_name: str
    memory_limit_in_mb: str  # an int is accepted (and made a str)
    deadline: float
    params: dict[str, Any]
    input: InputObject
    output: OutputWriter
    storage: Storage
    logger: logging.Logger
    pipeline: str
    event: ObjectEvent
    function_version: str = "$LATEST"
    scratch: Path = field(default_factory=lambda: Path(tempfile.gettempdir()))
    region: str = "us-east-1"
    qualifier: str | None = None  # the alias or version the step named (part of the invoked ARN)
    identity: CognitoIdentity = field(default_factory=CognitoIdentity)
    client_context: Any = None
    _progress_at: float = field(default=0.0, init=False, repr=False)

    def __post_init__(self) -> None:
        self.memory_limit_in_mb = str(self.memory_limit_in_mb)  # Lambda gives a str; callers may pass an int

    @property
    def scratch_dir(self) -> Path:
        """The step's private folder, made on first use and removed when the step ends."""
        self.scratch.mkdir(parents=True, exist_ok=True)
        return self.scratch

    def report_progress(self, percent: float | None, *, speed: float | None = None, final: bool = False) -> None:
        """Record how far a long step has got: shown on the running attempt by ``fileproc job ID``.

        ``percent`` is 0-100 (None if unknown), ``speed`` a multiple of real
        time (a transcode at ``2.0`` runs twice as fast as playback). Cheap to
        call often: reports closer than half a second apart are dropped
        unless ``final``.
        """
        now = time.monotonic()
        if not final and now - self._progress_at < PROGRESS_INTERVAL:
            return
        self._progress_at = now
        report = {"percent": None if percent is None else round(max(0.0, min(100.0, percent)), 1),
                  "speed": None if speed is None else round(speed, 2)}
        target = self.scratch_dir / PROGRESS_FILE
        partial = target.with_suffix(".partial")
        partial.write_text(json.dumps(report))
        os.replace(partial, target)  # the worker never reads half a report

    @property
    def invoked_function_arn(self) -> str:
        arn = f"arn:aws:lambda:{self.region}:{ACCOUNT_ID}:function:{self.function_name}"
        return f"{arn}:{self.qualifier}" if self.qualifier else arn

    @property
    def log_group_name(self) -> str:
        return log_group_name(self.function_name)

    @property
    def log_stream_name(self) -> str:
        return log_stream_name(self.function_version)

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.deadline - time.monotonic()) * 1000))


def step_outcome(outcome: dict[str, Any], writer: OutputWriter, reader: InputObject,
                 extra: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """What a step sends back to the worker: its outcome, with its outputs and bytes in and out."""
    outcome["outputs"] = [
        {"bucket": o.bucket, "key": o.key, "size": o.size, "etag": o.etag, "content_type": o.content_type}
        for o in writer.written
    ] + (extra or [])
    outcome["bytes_read"] = reader.bytes_read
    outcome["bytes_written"] = sum(o["size"] for o in outcome["outputs"])
    return outcome


def log_group_name(function_name: str) -> str:
    """Lambda's log group of a function: ``/aws/lambda/NAME``."""
    return f"/aws/lambda/{function_name}"


_STREAM_ID = os.urandom(16).hex()


def log_stream_name(version: str) -> str:
    """Lambda's log stream of this execution environment: ``YYYY/MM/DD/[VERSION]hex``.

    The hex part is drawn once per process, so each runner (an execution
    environment) has its own stream, as on Lambda.
    """
    return f"{time.strftime('%Y/%m/%d', time.gmtime())}/[{version}]{_STREAM_ID}"


def _new_stream_after_fork() -> None:
    global _STREAM_ID
    _STREAM_ID = os.urandom(16).hex()


os.register_at_fork(after_in_child=_new_stream_after_fork)
