"""The Whoosh engine behind :class:`~fileproc.search.SearchIndex`.

Layout of ``search.dir``::

    current -> gen-000003     a symlink, swapped atomically by a rebuild
    gen-000003/               the Whoosh index (its TOC and segments)
    writer.lock               held by the one indexer of this host (see indexer.py)
    cursor.json               how far the indexer has followed the outputs

A rebuild writes a whole new generation beside the current one and then
points ``current`` at it, so searches never see a half-built index, and a
broken generation is simply replaced.
"""

from __future__ import annotations

import contextlib
import html
import os
import pickle
import shutil
import struct
import threading
from collections.abc import Iterable
from datetime import UTC
from pathlib import Path
from typing import Any

from whoosh import highlight, index, qparser, query
from whoosh.analysis import StemmingAnalyzer
from whoosh.fields import DATETIME, ID, NUMERIC, STORED, TEXT, Schema
from whoosh.searching import Searcher

from fileproc.search import Document, Hit, IndexCorrupt, SearchIndex, SearchPage, batched

STORED_CHARS = 100_000
"""Text kept in the index for snippets (all of it is indexed). Highlighting
re-reads the stored text of each hit shown, so this bounds a page's cost."""

SNIPPET_CHARS = 240

_READ_ERRORS = (index.IndexError, OSError, ValueError, EOFError, KeyError, IndexError, struct.error,
                pickle.UnpicklingError, TypeError, AttributeError)
"""What Whoosh raises on files that are missing, truncated or garbled (it has no single base class)."""


def schema() -> Schema:
    return Schema(
        id=ID(unique=True, stored=True),
        bucket=ID(stored=True),
        key=ID(stored=True),
        type=ID(stored=True),
        content_type=ID(stored=True),
        etag=STORED(),
        size=NUMERIC(stored=True, bits=64),
        modified=DATETIME(stored=True),
        title=TEXT(analyzer=StemmingAnalyzer(), stored=True, field_boost=2.0),
        name=TEXT(analyzer=StemmingAnalyzer(), field_boost=1.5),  # the key's words: "q3 report.pdf"
        content=TEXT(analyzer=StemmingAnalyzer(), stored=True),
    )


class _Mark(highlight.HtmlFormatter):
    """Matched words as ``<mark>word</mark>``, everything else HTML-escaped."""

    def format_token(self, text: str, token: Any, replace: bool = False) -> str:
        return f"<mark>{html.escape(highlight.get_text(text, token, replace), quote=False)}</mark>"

    def _text(self, text: str) -> str:
        return html.escape(text, quote=False)


class WhooshIndex(SearchIndex):
    """A Whoosh index in ``directory``; made empty on first use.

    Searches share one searcher, refreshed when a commit landed. Writes go
    through :meth:`update` only, which the one indexer of the host calls.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._lock = threading.Lock()
        self._searcher: Searcher | None = None
        self._ix: Any = None

    # --- files --------------------------------------------------------------------------

    @property
    def current(self) -> Path:
        return self.directory / "current"

    def exists(self) -> bool:
        """Whether an index is there (readable or not: opening it says that)."""
        return self.current.is_dir() and any(self.current.glob("*.toc"))

    def _open(self) -> Any:
        if self._ix is None:
            if not self.exists():
                self._install(self._new_generation())
            try:
                self._ix = index.open_dir(str(self.current))
            except _READ_ERRORS as exc:
                raise IndexCorrupt(f"cannot open the search index in {self.current}: {exc!r}") from exc
        return self._ix

    def _new_generation(self) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        numbers = [int(p.name[4:]) for p in self.directory.glob("gen-*") if p.name[4:].isdigit()]
        path = self.directory / f"gen-{max(numbers, default=0) + 1:06d}"
        path.mkdir()
        index.create_in(str(path), schema())
        return path

    def _install(self, generation: Path) -> None:
        """Point ``current`` at ``generation`` (one rename: atomic) and drop older generations."""
        link = self.directory / f".current-{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        link.symlink_to(generation.name)
        os.replace(link, self.current)
        for old in self.directory.glob("gen-*"):
            if old.name != generation.name:
                shutil.rmtree(old, ignore_errors=True)  # open searchers keep their files (unlinked) until closed
        self._ix = None

    def reset(self) -> None:
        """Forget open handles (after another process rebuilt the index)."""
        with self._lock:
            if self._searcher is not None:
                self._searcher.close()
            self._searcher, self._ix = None, None

    # --- writing ------------------------------------------------------------------------

    def update(self, add: Iterable[Document] = (), delete: Iterable[str] = ()) -> None:
        ix = self._open()
        try:
            writer = ix.writer(limitmb=64)
        except _READ_ERRORS as exc:
            raise IndexCorrupt(f"cannot write the search index: {exc!r}") from exc
        try:
            for doc_id in delete:
                writer.delete_by_term("id", doc_id)
            for document in add:
                writer.update_document(**_fields(document))
        except BaseException:
            writer.cancel()
            raise
        try:
            writer.commit()
        except _READ_ERRORS as exc:
            raise IndexCorrupt(f"cannot commit to the search index: {exc!r}") from exc

    def rebuild(self, documents: Iterable[Document]) -> int:
        generation = self._new_generation()
        ix = index.open_dir(str(generation))
        count = 0
        try:
            for batch in batched(documents, 1000):
                writer = ix.writer(limitmb=128)
                for document in batch:
                    writer.update_document(**_fields(document))
                writer.commit()
                count += len(batch)
            ix.optimize()
        except BaseException:
            shutil.rmtree(generation, ignore_errors=True)
            raise
        self.reset()
        self._install(generation)
        return count

    # --- reading ------------------------------------------------------------------------

    def _current_searcher(self) -> Searcher:
        try:
            if self._searcher is not None and not self._searcher.up_to_date():
                # A new searcher, not Searcher.refresh(): that reuses segment readers and
                # so misses deletions committed to a segment it already had open.
                self._searcher.close()
                self._searcher = None
            if self._searcher is None:
                self._searcher = self._open().searcher()
        except _READ_ERRORS as exc:
            self._searcher, self._ix = None, None
            raise IndexCorrupt(f"cannot read the search index: {exc!r}") from exc
        return self._searcher

    def count(self) -> int:
        with self._lock:
            return int(self._current_searcher().doc_count())

    def versions(self) -> dict[str, str]:
        with self._lock:
            searcher = self._current_searcher()
            return {fields["id"]: fields.get("etag", "") for fields in searcher.all_stored_fields()}

    def search(self, query_text: str, *, bucket: str | None = None, type: str | None = None, page: int = 1,
               per_page: int = 10) -> SearchPage:
        page, per_page = max(1, page), max(1, min(per_page, 1000))
        with self._lock:
            searcher = self._current_searcher()
            parser = qparser.MultifieldParser(["title", "name", "content"], searcher.schema)
            parsed = parser.parse(query_text) if query_text.strip() else query.Every()
            terms = [query.Term(name, value) for name, value in (("bucket", bucket), ("type", type)) if value]
            wanted = query.And(terms) if terms else None
            try:
                results = searcher.search_page(parsed, page, pagelen=per_page, filter=wanted)
                results.results.fragmenter = highlight.ContextFragmenter(maxchars=SNIPPET_CHARS, surround=60)
                results.results.formatter = _Mark()
                hits = [_hit(hit) for hit in results]
                total = len(results.results)
            except _READ_ERRORS as exc:
                self._searcher, self._ix = None, None
                raise IndexCorrupt(f"cannot search the index: {exc!r}") from exc
        return SearchPage(query_text, total, page, per_page, hits)

    def close(self) -> None:
        self.reset()


def _hit(hit: Any) -> Hit:
    snippet = hit.highlights("content", top=2) or ""
    if not snippet:
        snippet = html.escape(str(hit.get("content", ""))[:SNIPPET_CHARS], quote=False)
    return Hit(bucket=hit["bucket"], key=hit["key"], score=round(float(hit.score or 0.0), 4), snippet=snippet,
               type=hit.get("type", ""), title=hit.get("title", ""), size=int(hit.get("size") or 0),
               etag=hit.get("etag", ""))


def _fields(document: Document) -> dict[str, Any]:
    words = document.key.replace("/", " ").replace("_", " ").replace("-", " ").replace(".", " ")
    fields: dict[str, Any] = {
        "id": document.id, "bucket": document.bucket, "key": document.key, "type": document.type or "other",
        "content_type": document.content_type or "", "etag": document.etag, "size": document.size,
        "title": document.title, "name": words, "content": document.text,
    }
    if len(document.text) > STORED_CHARS:
        fields["_stored_content"] = document.text[:STORED_CHARS]
    if document.last_modified is not None:
        modified = document.last_modified
        fields["modified"] = modified.astimezone(UTC).replace(tzinfo=None) if modified.tzinfo else modified
    return fields


__all__ = ["STORED_CHARS", "WhooshIndex", "schema"]
