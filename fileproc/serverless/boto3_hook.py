"""boto3 in a deployed function's runner: what the handler writes is recorded, and marked with its provenance.

Only boto3's default session (what ``boto3.client("s3")`` uses) is hooked,
when it is made, and boto3 itself only when the handler imports it
(:func:`hook_boto3_when_imported`). Each object written (``PutObject``,
a multipart upload, ``CopyObject``) gets the pipeline's provenance as its
metadata, so it never loops back into the pipeline, and is recorded
(:func:`written`) so that the job lists it among its outputs.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

_written: list[tuple[str, str, str]] = []
_provenance: dict[str, str] = {}


def start_invocation(provenance: dict[str, str]) -> None:
    """Before each invocation: what boto3 writes from now on is this step's, with this provenance."""
    global _provenance
    _written.clear()
    _provenance = dict(provenance)


def written() -> list[tuple[str, str, str]]:
    """(bucket, key, etag) of each object the handler wrote through boto3 in this invocation."""
    return list(_written)


class _AfterImport:
    """A meta path finder that calls ``then(module)`` once ``name`` is imported (it loads nothing itself)."""

    def __init__(self, name: str, then: Callable[[Any], None]) -> None:
        self.name, self.then = name, then

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != self.name:
            return None
        from importlib.machinery import PathFinder

        spec = PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        loader, then = spec.loader, self.then
        run = loader.exec_module

        def exec_module(module: Any) -> None:
            run(module)
            then(module)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        sys.meta_path.remove(self)
        return spec


def hook_boto3_when_imported() -> None:
    """In a runner, before the handler's module is imported: boto3's default session, once made, records
    and marks what the handler writes."""
    # boto3 is not imported by the runner (it costs a cold start ~100 ms): it is hooked when the
    # handler imports it, before the handler's module can make a client at its top.
    if "boto3" in sys.modules:
        _hook_boto3(sys.modules["boto3"])
    else:
        sys.meta_path.insert(0, _AfterImport("boto3", _hook_boto3))


def _hook_boto3(boto3: Any) -> None:
    # Only boto3's default session (what `boto3.client("s3")` uses) is hooked, when it is made.
    original = boto3.setup_default_session

    def setup_default_session(**kwargs: Any) -> None:
        original(**kwargs)
        events = boto3.DEFAULT_SESSION.events
        for operation in ("PutObject", "CreateMultipartUpload", "CopyObject"):
            events.register(f"before-parameter-build.s3.{operation}", _mark)
        for operation in ("PutObject", "CompleteMultipartUpload", "CopyObject"):
            events.register(f"after-call.s3.{operation}", _record)

    boto3.setup_default_session = setup_default_session
    boto3.DEFAULT_SESSION = None


def _mark(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
    context["fileproc_target"] = (params.get("Bucket"), params.get("Key"))
    if _provenance:
        if params.get("MetadataDirective") == "COPY":  # a copy keeps its source's metadata: nothing to add
            return
        params["Metadata"] = {**_provenance, **(params.get("Metadata") or {})}


def _record(http_response: Any, parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
    target = context.get("fileproc_target")
    status = getattr(http_response, "status_code", 0)
    if target and target[0] and target[1] and 200 <= status < 300:
        etag = parsed.get("ETag") or (parsed.get("CopyObjectResult") or {}).get("ETag") or ""
        _written.append((target[0], target[1], str(etag).strip('"')))


__all__ = ["hook_boto3_when_imported", "start_invocation", "written"]
