"""The index's fields, and a :class:`~fileproc.search.Document` as those fields."""

from __future__ import annotations

from datetime import UTC
from typing import Any

from whoosh.fields import DATETIME, ID, NUMERIC, STORED, TEXT, Schema
from whoosh.formats import Positions

from fileproc.functions.analysis import content_analyzer, positions
from fileproc.search import Document

STORED_CHARS = 100_000
"""Text kept in the index for snippets (all of it is indexed). Highlighting
re-reads the stored text of each hit shown, so this bounds a page's cost."""

SEARCHED_FIELDS = ("title", "name", "content")
"""The fields a query's words are looked for in."""


def schema() -> Schema:
    words = content_analyzer()
    return Schema(
        id=ID(unique=True, stored=True),
        bucket=ID(stored=True),
        key=ID(stored=True),
        type=ID(stored=True),
        content_type=ID(stored=True),
        etag=STORED(),
        size=NUMERIC(stored=True, bits=64),
        modified=DATETIME(stored=True),
        title=TEXT(analyzer=words, stored=True, field_boost=2.0),
        name=TEXT(analyzer=words, field_boost=1.5),  # the key's words: "q3 report.pdf"
        content=AnalyzedText(analyzer=words, stored=True),
    )


class Analyzed:
    """A text field's value whose words were analyzed already: word -> positions."""

    def __init__(self, where: dict[str, list[int]]) -> None:
        self.where = where


class AnalyzedText(TEXT):  # type: ignore[misc]
    """Whoosh's TEXT field, that also takes :class:`Analyzed` words (the step did the analysis).

    Whoosh pickles the schema into every index's TOC, so the class is named on
    disk by module and name: ``fileproc.search.whoosh.AnalyzedText``, where it
    was first defined. That name is kept (the package exports it), for the
    indexes written before and for those written now to open with older code.
    """

    __module__ = "fileproc.search.whoosh"

    def index(self, value: Any, **kwargs: Any) -> Any:
        if not isinstance(value, Analyzed):
            return super().index(value, **kwargs)
        fmt, boost = self.format, self.format.field_boost
        return [(word.encode("utf-8"), len(at), len(at) * boost, fmt.encode(at)) for word, at in value.where.items()]


def fields(document: Document, into: Schema) -> dict[str, Any]:
    """``document`` as the keyword arguments of a writer's ``update_document`` for the schema ``into``."""
    words = document.key.replace("/", " ").replace("_", " ").replace("-", " ").replace(".", " ")
    found: dict[str, Any] = {
        "id": document.id, "bucket": document.bucket, "key": document.key, "type": document.type or "other",
        "content_type": document.content_type or "", "etag": document.etag, "size": document.size,
        "title": document.title, "name": words, "content": document.text,
    }
    content = into["content"]
    where = positions(document.terms)
    if where is not None and isinstance(content, AnalyzedText) and isinstance(content.format, Positions):
        found["content"] = Analyzed(where)  # the step's words (an index made before them analyzes the text)
        found["_stored_content"] = document.text[:STORED_CHARS]
    elif len(document.text) > STORED_CHARS:
        found["_stored_content"] = document.text[:STORED_CHARS]
    if document.last_modified is not None:
        modified = document.last_modified
        found["modified"] = modified.astimezone(UTC).replace(tzinfo=None) if modified.tzinfo else modified
    return found


__all__ = ["SEARCHED_FIELDS", "STORED_CHARS", "Analyzed", "AnalyzedText", "fields", "schema"]
