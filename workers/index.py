"""The built-in ``index`` function: a document's text, written back for search.

Params (``context.params``)::

    max_chars:  1000000     # text kept per document; the rest is cut (the document says so)
    max_bytes:  104857600   # larger inputs fail with InvalidInput instead of being read

For each object it writes one output, ``text.json``: a *document object*
holding the object's metadata (bucket, key, size, content type, etag, last
modified), its kind (text, markdown, html, csv, json, pdf, docx), a title,
the extracted text and its words as the index analyzes them
(``fileproc.functions.analysis``). That object is the source of truth of search: the
service's indexer (``fileproc.search.indexer``) applies it to the search
index, and ``fileproc reindex`` rebuilds the index from these objects alone.

When the step runs for an ``s3:ObjectRemoved:*`` event (the pipeline must
list it in ``match.events``), the output is a *tombstone* instead (the same
name, ``{"deleted": true}`` and no text), which takes the document out of
the index; if the object exists again by then (deleted, then uploaded anew),
nothing is written: its own creation job indexes it.

The step never opens the index itself: a search index has one writer, and
steps run on any number of workers.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fileproc import Context, InvalidInput, function
from fileproc.errors import ObjectNotFound  # what context.storage raises for a missing object
from workers.extract import extract, kind_of

DOCUMENT_CONTENT_TYPE = "application/vnd.fileproc.document+json"
"""The content type the service's indexer follows (any function may write documents)."""

DOCUMENT_NAME = "text.json"


class IndexParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_chars: int = Field(1_000_000, ge=1, description="Text kept per document; the rest is cut.")
    max_bytes: int = Field(100 * 1024 * 1024, ge=1, description="Larger inputs fail instead of being read.")


@function("index", timeout=120, memory_mb=1024, retries=2, params=IndexParams)
def handler(event: dict[str, Any], context: Context) -> dict[str, Any]:
    """Write ``text.json`` (a document, or a tombstone for a removed object); say what was written."""
    params = IndexParams.model_validate(context.params)
    record = event["Records"][0]
    bucket, key = context.input.bucket, context.input.key
    if str(record.get("eventName", "")).startswith("ObjectRemoved"):
        return _removed(context, bucket, key)
    info = context.input.info
    if info.size > params.max_bytes:
        raise InvalidInput(f"{key} is {info.size} bytes, more than this step's max_bytes ({params.max_bytes})")
    with context.input.open() as stream:
        head = stream.read(8192)
    kind = kind_of(head, key, info.content_type)
    extracted = extract(kind, context.input.open, lambda: context.input.path, params.max_chars)
    from fileproc.functions.analysis import terms  # (Whoosh's analyzers: 4 MB, in the runner only)

    modified = info.last_modified or datetime.now(UTC)
    document = {
        "fileproc_document": 1, "bucket": bucket, "key": key, "etag": info.etag, "size": info.size,
        "content_type": info.content_type, "last_modified": modified.isoformat(), "type": extracted.kind,
        "title": extracted.title, "text": extracted.text, "truncated": extracted.truncated,
        # Its words analyzed here, on any worker: the index's one writer then only writes them.
        "terms": terms(extracted.text),
    }
    ref = context.output.put(DOCUMENT_NAME, json.dumps(document, ensure_ascii=False).encode(),
                             content_type=DOCUMENT_CONTENT_TYPE)
    context.logger.info("index %s/%s: %s, %d characters%s", bucket, key, extracted.kind, len(extracted.text),
                        " (cut)" if extracted.truncated else "")
    return {"type": extracted.kind, "title": extracted.title, "chars": len(extracted.text),
            "truncated": extracted.truncated, "document": ref.key}


def _removed(context: Context, bucket: str, key: str) -> dict[str, Any]:
    try:
        context.storage.head(bucket, key)
    except ObjectNotFound:  # gone, as the event says (any other storage error is retried)
        tombstone = {"fileproc_document": 1, "bucket": bucket, "key": key, "deleted": True}
        ref = context.output.put(DOCUMENT_NAME, json.dumps(tombstone).encode(), content_type=DOCUMENT_CONTENT_TYPE)
        return {"deleted": True, "document": ref.key}
    return {"deleted": False, "reason": "the object exists again; its own job indexes it"}


def warm() -> None:
    """Import the PDF and DOCX readers and set up the analyzer before the first event (a few hundred ms otherwise)."""
    import docx  # noqa: F401
    import pypdf  # noqa: F401

    from fileproc.functions.analysis import terms

    terms("warm")
