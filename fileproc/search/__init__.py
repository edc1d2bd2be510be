"""Full-text search over what the ``index`` function extracted.

The pieces, in the order a document goes through them::

    workers/index.py   extracts text, writes it back as a *document object*
                       (JSON, content type DOCUMENT_CONTENT_TYPE): the source of truth
    Indexer            the ONE writer of a host's index: follows the outputs the
                       state database records, reads those document objects,
                       applies them to the index in batches (one commit each)
    SearchIndex        the engine behind a small interface (add, delete, search,
                       count, rebuild); :class:`~fileproc.search.whoosh.WhooshIndex`

Steps never open the index: any number of workers on any hosts only write
document objects to storage. Each host that answers searches keeps its own
index (``search.dir``) and its own indexer; since both only follow the state
database and read storage, every copy converges to the same documents, and a
copy that is missing or corrupt is rebuilt from storage (``fileproc reindex``).

A document object (and a tombstone, written when the source is deleted)::

    {"fileproc_document": 1, "bucket": "docs", "key": "a/report.pdf", "etag": "...",
     "size": 1234, "content_type": "application/pdf", "last_modified": "2026-...Z",
     "type": "pdf", "title": "Report", "text": "...",
     "terms": {"analyzer": "...", "start": 0, "content": "report q3 ..."}}   # optional: fileproc/functions/analysis.py
    {"fileproc_document": 1, "bucket": "docs", "key": "a/report.pdf", "deleted": true}
"""

from __future__ import annotations

import abc
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from fileproc.errors import FileprocError

DOCUMENT_CONTENT_TYPE = "application/vnd.fileproc.document+json"
"""Content type of a document object: what any step writes to have something indexed."""

DOCUMENT_NAME = "text.json"
"""The name the ``index`` function gives its document object (under the pipeline's output key)."""


@dataclass(frozen=True)
class Document:
    """One searchable object: where it is, what it is, and its text."""

    bucket: str
    key: str
    text: str
    etag: str = ""
    size: int = 0
    content_type: str = ""
    type: str = ""
    title: str = ""
    last_modified: datetime | None = None
    source: str = ""  # the document object it was read from: "bucket/key"
    terms: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)
    """The text's words as the step analyzed them (:mod:`fileproc.functions.analysis`), for the engine."""

    @property
    def id(self) -> str:
        """Unique per source object: bucket names hold no ``/``, so ``bucket/key`` is unambiguous."""
        return f"{self.bucket}/{self.key}"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("source")
        if data["terms"] is None:
            data.pop("terms")
        data["last_modified"] = self.last_modified.isoformat() if self.last_modified else None
        return {"fileproc_document": 1, **data}


@dataclass(frozen=True)
class Tombstone:
    """A document object saying its source was deleted: the document leaves the index."""

    bucket: str
    key: str

    @property
    def id(self) -> str:
        return f"{self.bucket}/{self.key}"


def parse_document(data: bytes, source: str = "") -> Document | Tombstone | None:
    """A document object's bytes as a Document or Tombstone; None for anything else."""
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(raw, Mapping) or raw.get("fileproc_document") != 1:
        return None
    bucket, key = raw.get("bucket"), raw.get("key")
    if not isinstance(bucket, str) or not isinstance(key, str):
        return None
    if raw.get("deleted"):
        return Tombstone(bucket, key)
    modified = raw.get("last_modified")
    try:
        last_modified = datetime.fromisoformat(modified) if isinstance(modified, str) else None
    except ValueError:
        last_modified = None
    return Document(bucket=bucket, key=key, text=str(raw.get("text") or ""), etag=str(raw.get("etag") or ""),
                    size=int(raw.get("size") or 0), content_type=str(raw.get("content_type") or ""),
                    type=str(raw.get("type") or ""), title=str(raw.get("title") or ""),
                    last_modified=last_modified, source=source,
                    terms=raw["terms"] if isinstance(raw.get("terms"), Mapping) else None)


@dataclass(frozen=True)
class Hit:
    bucket: str
    key: str
    score: float
    snippet: str  # matched words wrapped in <mark></mark>, the rest HTML-escaped
    type: str = ""
    title: str = ""
    size: int = 0
    etag: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SearchPage:
    query: str
    total: int
    page: int
    per_page: int
    hits: list[Hit] = field(default_factory=list)
    exact: bool = True  # False: more matched than the hits up to this page, and ``total`` is an estimate

    def to_dict(self) -> dict[str, Any]:
        return {"query": self.query, "total": self.total, "exact": self.exact, "page": self.page,
                "per_page": self.per_page, "hits": [h.to_dict() for h in self.hits]}


class SearchIndex(abc.ABC):
    """A full-text index of Documents, unique by :attr:`Document.id`.

    An implementation SHALL make :meth:`update` atomic (all of a batch or
    none of it), SHALL replace a document added twice (never two hits for one
    object), and SHALL raise :class:`IndexCorrupt` when what is on disk cannot
    be read, so the indexer rebuilds it. It MAY assume one writer at a time:
    the :class:`~fileproc.search.indexer.Indexer` guarantees that.
    """

    @abc.abstractmethod
    def update(self, add: Iterable[Document] = (), delete: Iterable[str] = ()) -> None:
        """Add (or replace) ``add`` and remove the ids ``delete``, in one commit."""

    def add(self, documents: Iterable[Document]) -> None:
        self.update(add=documents)

    def delete(self, ids: Iterable[str]) -> None:
        self.update(delete=ids)

    def begin(self) -> Batch:
        """Changes applied together by :meth:`Batch.commit` (atomic, like :meth:`update`).

        The default buffers them for one :meth:`update`; an engine may do the
        work as they are staged (Whoosh analyzes each document then), so an
        indexer following a stream of documents spreads it over the stream.
        """
        return Batch(self)

    @abc.abstractmethod
    def search(self, query: str, *, bucket: str | None = None, type: str | None = None, page: int = 1,
               per_page: int = 10) -> SearchPage:
        """Ranked hits for ``query`` (the engine's query syntax), optionally only in ``bucket`` / of ``type``."""

    @abc.abstractmethod
    def count(self) -> int:
        """How many documents the index holds."""

    @abc.abstractmethod
    def versions(self) -> dict[str, str]:
        """id -> etag of every indexed document (for the check that index and storage agree)."""

    @abc.abstractmethod
    def rebuild(self, documents: Iterable[Document]) -> int:
        """Replace the whole index with ``documents``, atomically for searchers; how many."""


class Batch:
    """Changes to a :class:`SearchIndex` that become visible together, at :meth:`commit`.

    A document id staged twice in one batch is not allowed (the engine may
    not be able to replace what it has not committed yet): :attr:`ids` says
    what a batch holds, so its user commits first.
    """

    def __init__(self, index: SearchIndex) -> None:
        self.index = index
        self.ids: set[str] = set()
        self._add: list[Document] = []
        self._delete: list[str] = []

    def stage(self, add: Iterable[Document] = (), delete: Iterable[str] = ()) -> None:
        add, delete = list(add), list(delete)
        ids = [d.id for d in add] + delete
        if len(set(ids)) != len(ids) or self.ids & set(ids):
            raise ValueError("a document id is staged twice in one batch: commit first")
        self.ids |= set(ids)
        self._stage(add, delete)

    def _stage(self, add: list[Document], delete: list[str]) -> None:
        self._add += add
        self._delete += delete

    def commit(self) -> None:
        self.index.update(add=self._add, delete=self._delete)

    def cancel(self) -> None:
        self._add, self._delete = [], []


class IndexCorrupt(FileprocError):
    """The index on disk cannot be read (missing files, a broken segment)."""


def batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


__all__ = ["DOCUMENT_CONTENT_TYPE", "DOCUMENT_NAME", "Batch", "Document", "Hit", "IndexCorrupt", "SearchIndex",
           "SearchPage", "Tombstone", "batched", "parse_document"]
