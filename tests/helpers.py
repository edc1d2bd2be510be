"""Calling a function the way the runtime does, without the runtime.

:func:`invocation` builds the ``(event, context)`` pair a handler gets, on a
real storage backend, for an object that is already stored::

    storage = LocalStorage(tmp_path / "buckets")
    storage.ensure_bucket("uploads")
    storage.put("uploads", "cat.jpg", jpeg_bytes, content_type="image/jpeg")
    event, context = invocation(storage, "uploads", "cat.jpg", tmp_path / "scratch",
                                function_name="thumbnail", params={"sizes": [64]})
    result = handler(event, context)
    context.output.written   # [OutputRef(bucket="out", key="thumbnail/cat.jpg/thumb-64.webp", ...)]
"""

from __future__ import annotations

import io
import logging
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from fileproc import Context, InputObject, OutputWriter
from fileproc.app import build
from fileproc.events import ObjectEvent
from fileproc.storage import Storage

if TYPE_CHECKING:
    from fileproc.service import Service

OUTPUT_BUCKET = "out"
"""Where :func:`invocation` sends outputs unless told otherwise (created if missing)."""


def invocation(
    storage: Storage,
    bucket: str,
    key: str,
    scratch: Path,
    *,
    function_name: str,
    params: dict[str, Any] | None = None,
    out_bucket: str = OUTPUT_BUCKET,
    out_prefix: str | None = None,
    pipeline: str = "test",
    timeout: float = 60.0,
    memory_mb: int = 1024,
) -> tuple[dict[str, Any], Context]:
    """The ``(event, context)`` for running ``function_name`` on ``bucket/key``.

    Outputs go to ``out_bucket`` under ``out_prefix`` (default
    ``{function_name}/{key}/``), with provenance metadata naming the source.
    """
    info = storage.head(bucket, key)
    storage.ensure_bucket(out_bucket)
    scratch.mkdir(parents=True, exist_ok=True)
    prefix = out_prefix if out_prefix is not None else f"{function_name}/{key}/"
    event = ObjectEvent(
        bucket=bucket,
        key=key,
        size=info.size,
        etag=info.etag,
        version_id=info.version_id,
        content_type=info.content_type,
        source="test",
    )
    provenance = {"source-bucket": bucket, "source-key": key, "source-etag": info.etag, "pipeline": pipeline}
    context = Context(
        aws_request_id=str(uuid.uuid4()),
        function_name=function_name,
        memory_limit_in_mb=memory_mb,
        deadline=time.monotonic() + timeout,
        params=dict(params or {}),
        input=InputObject(storage, info, scratch),
        output=OutputWriter(storage, out_bucket, key_for=lambda name: f"{prefix}{name}", provenance=provenance),
        storage=storage,
        logger=logging.getLogger(f"fileproc.function.{function_name}"),
        pipeline=pipeline,
        event=event,
        scratch=scratch,
    )
    return {"Records": [event.to_record()]}, context


def read_object(storage: Storage, bucket: str, key: str) -> bytes:
    """The whole stored object (tests only: objects here are small)."""
    with storage.open(bucket, key) as stream:
        return stream.read()


def local_service(folder: Path, pipelines: list[dict[str, Any]], **settings: Any) -> Service:
    """A service on folders and SQLite under ``folder`` with the test functions, ``pipelines`` and
    any other ``settings`` sections; its buckets made.

    Example::

        service = local_service(tmp_path, [{"name": "p", "match": {"bucket": "inbox"},
                                            "steps": [{"function": "thumbnail"}], "output": {"bucket": "out"}}])
    """
    from fileproc.config import load_settings
    from tests.procs import FUNCTIONS_DIR, write_config

    folder.mkdir(parents=True, exist_ok=True)
    config = write_config(folder / "fileproc.toml", {
        "data_dir": str(folder / "data"), "functions": {"paths": [str(FUNCTIONS_DIR)]}, "pipelines": pipelines,
        **settings})
    service = build(load_settings(config, env={}))
    service.prepare_buckets()
    return service


def image_bytes(width: int = 800, height: int = 600, color: str = "teal", fmt: str = "JPEG") -> bytes:
    """A real image file of one colour, encoded as ``fmt``."""
    mode = "RGBA" if fmt == "PNG" else "RGB"
    out = io.BytesIO()
    Image.new(mode, (width, height), color).save(out, fmt)
    return out.getvalue()
