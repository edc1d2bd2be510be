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
import copy
import html
import logging
import os
import pickle
import re
import shutil
import struct
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC
from pathlib import Path
from typing import Any

import numpy as np
from whoosh import index, qparser, query, writing
from whoosh.fields import DATETIME, ID, NUMERIC, STORED, TEXT, Schema
from whoosh.formats import Positions
from whoosh.reading import SegmentReader
from whoosh.searching import Searcher

from fileproc.search import Batch, Document, Hit, IndexCorrupt, SearchIndex, SearchPage, analysis, topk
from fileproc.search.codec import WriterCodec

log = logging.getLogger(__name__)

STORED_CHARS = 100_000
"""Text kept in the index for snippets (all of it is indexed). Highlighting
re-reads the stored text of each hit shown, so this bounds a page's cost."""

SNIPPET_CHARS = 240

SNIPPET_SURROUND = 60
"""Characters of context before the first and after the last match of a fragment."""

HIGHLIGHT_CHARS = 20_000
"""The start of a hit's stored text that highlighting looks at (a match further in gives the plain start)."""

HIGHLIGHT_TERMS = 50
"""Most query terms highlighted (a prefix query may expand to many)."""

MAX_SEGMENTS = 6
"""Segments a commit leaves at most (see :func:`_merge_few`)."""

WARM_SLICE = 0.002
"""Seconds the read-ahead holds the index at a time (a search waits at most this long)."""

PARSED_KEPT = 1024
"""Parsed queries kept (by their text)."""

PRESENT_KEPT = 100_000
"""Words remembered as present or absent per searcher (see :func:`_prune`)."""

FILTERS_KEPT = 32
"""Bucket/type filters (sets of document numbers) kept per searcher."""

_READ_ERRORS = (index.IndexError, OSError, ValueError, EOFError, KeyError, IndexError, struct.error,
                pickle.UnpicklingError, TypeError, AttributeError)
"""What Whoosh raises on files that are missing, truncated or garbled (it has no single base class)."""


def schema() -> Schema:
    words = analysis.content_analyzer()
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
    """Whoosh's TEXT field, that also takes :class:`Analyzed` words (the step did the analysis)."""

    def index(self, value: Any, **kwargs: Any) -> Any:
        if not isinstance(value, Analyzed):
            return super().index(value, **kwargs)
        fmt, boost = self.format, self.format.field_boost
        return [(word.encode("utf-8"), len(at), len(at) * boost, fmt.encode(at)) for word, at in value.where.items()]


class _Snippets:
    """Highlighted snippets for the hits of one query, without analyzing whole texts again.

    Whoosh's highlighter runs the stemming analyzer over every word of each
    hit's text, which costs more than the search. Here a regular expression
    (run in C) finds the words that *may* be one of the query's terms (they
    start like the term's stem: Porter stems are the word's start but for
    their last two letters at most), and only those few are run through the
    field's analyzer to confirm them. The snippet is up to two fragments
    around the matches with the most distinct terms, matched words in
    ``<mark></mark>``, the rest HTML-escaped.
    """

    def __init__(self, searcher: Searcher, parsed: Any, present: Callable[[str, Any], bool] | None = None) -> None:
        self.analyzer = searcher.schema["content"].analyzer
        words: set[str] = set()
        leaves = _plain_terms(parsed)
        if leaves is not None and present is not None:  # words only: what existing_terms gives, remembered
            words = {str(t.text) for t in leaves if t.fieldname == "content" and present("content", t.text)}
        else:
            with contextlib.suppress(*_READ_ERRORS):
                # fieldname= given: without it Whoosh 2.7 keeps only the first leaf's field (a loop variable
                # shadows the argument)
                for _, text in parsed.existing_terms(searcher.reader(), phrases=True, expand=True,
                                                     fieldname="content"):
                    words.add(text.decode("utf-8") if isinstance(text, bytes) else str(text))
                    if len(words) >= HIGHLIGHT_TERMS:
                        break
        self.words = frozenset(words)
        starts = sorted({word[:max(3, len(word) - 2)] for word in words}, key=len, reverse=True)
        self.candidates = (re.compile(r"\b(?:" + "|".join(map(re.escape, starts)) + r")\w*", re.IGNORECASE)
                           if starts else None)
        self.confirmed: dict[str, bool] = {}

    def _is_term(self, word: str) -> bool:
        found = self.confirmed.get(word)
        if found is None:
            found = any(token.text in self.words for token in self.analyzer(word))
            self.confirmed[word] = found
        return found

    def __call__(self, text: str) -> str:
        matches = []
        if self.candidates is not None:
            for match in self.candidates.finditer(text):
                if self._is_term(match.group()):
                    matches.append((match.start(), match.end(), match.group().lower()))
                    if len(matches) >= 64:
                        break
        if not matches:
            return html.escape(text[:SNIPPET_CHARS], quote=False)
        fragments = []  # (distinct words, start, end, matches)
        i = 0
        while i < len(matches):
            j = i + 1
            while j < len(matches) and matches[j][1] - matches[i][0] <= SNIPPET_CHARS - 2 * SNIPPET_SURROUND:
                j += 1
            group = matches[i:j]
            start = max(0, group[0][0] - SNIPPET_SURROUND)
            space = text.find(" ", start, group[0][0])
            start = space + 1 if start and space >= 0 else start
            end = min(len(text), group[-1][1] + SNIPPET_SURROUND)
            space = text.rfind(" ", group[-1][1], end)
            end = space if end < len(text) and space >= 0 else end
            fragments.append((len({m[2] for m in group}), start, end, group))
            i = j
        best = sorted(sorted(fragments, key=lambda f: -f[0])[:2], key=lambda f: f[1])
        out = []
        for _, start, end, group in best:
            parts, at = [], start
            for m_start, m_end, _word in group:
                parts.append(html.escape(text[at:m_start], quote=False))
                parts.append(f"<mark>{html.escape(text[m_start:m_end], quote=False)}</mark>")
                at = m_end
            parts.append(html.escape(text[at:end], quote=False))
            out.append("".join(parts).replace("\n", " ").strip())
        return "...".join(out)


class WhooshIndex(SearchIndex):
    """A Whoosh index in ``directory``; made empty on first use.

    Searches share one searcher, refreshed when a commit landed. Writes go
    through :meth:`update` only, which the one indexer of the host calls.
    """

    def __init__(self, directory: Path, *, read_ahead: bool = False) -> None:
        self.directory = Path(directory)
        self.read_ahead = read_ahead  # frequent words read ahead (see _warm): for a process serving searches
        self._lock = threading.Lock()
        self._searcher: Searcher | None = None
        self._ix: Any = None
        self._parser: Any = None
        self._parsed: dict[str, Any] = {}  # query text -> parsed query (the parser is slow; queries repeat)
        self._present: _Present | None = None
        self._filters: dict[tuple[str, str], set[int]] = {}
        self._masks: dict[tuple[str, str], np.ndarray] = {}
        self._topk = topk.Cache()
        self._warmer: threading.Thread | None = None  # reads frequent words ahead (see _warm)
        self._warmed: set[str] = set()  # segments whose frequent words were read ahead
        self._warm_checked: Searcher | None = None
        self._warm_idle = threading.Event()
        self._warm_idle.set()

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
        adds = _unique(add)
        added = {document.id for document in adds}
        batch = self.begin()
        try:
            batch.stage(add=adds, delete=[i for i in dict.fromkeys(delete) if i not in added])
        except BaseException:
            batch.cancel()
            raise
        batch.commit()

    def begin(self) -> _WhooshBatch:
        ix = self._open()
        try:
            return _WhooshBatch(self, ix.writer(limitmb=64, codec=WriterCodec()))
        except _READ_ERRORS as exc:
            raise IndexCorrupt(f"cannot write the search index: {exc!r}") from exc

    def rebuild(self, documents: Iterable[Document]) -> int:
        generation = self._new_generation()
        ix = index.open_dir(str(generation))
        count = 0
        try:
            # One writer: Whoosh spills sorted runs to disk past limitmb and merges them at the
            # commit, so the new generation is one segment without writing everything twice.
            writer = ix.writer(limitmb=128, codec=WriterCodec())
            try:
                for document in documents:
                    writer.update_document(**_fields(document, writer.schema))
                    count += 1
            except BaseException:
                writer.cancel()
                raise
            writer.commit(optimize=True)
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
                self._filters.clear()  # document numbers change with the segments
                self._masks.clear()
                self._present = _Present(self._searcher.reader())
                self._topk.forget({r.segment().segment_id() for r, _ in self._searcher.reader().leaf_readers()
                                   if r.segment() is not None})
        except _READ_ERRORS as exc:
            self._searcher, self._ix = None, None
            self._filters.clear()
            self._masks.clear()
            raise IndexCorrupt(f"cannot read the search index: {exc!r}") from exc
        return self._searcher

    def count(self) -> int:
        with self._lock:
            return int(self._current_searcher().doc_count())

    def versions(self) -> dict[str, str]:
        with self._lock:
            searcher = self._current_searcher()
            return {fields["id"]: fields.get("etag", "") for fields in searcher.all_stored_fields()}

    def _filter(self, searcher: Searcher, bucket: str | None, type: str | None) -> set[int] | None:
        """The document numbers in ``bucket`` / of ``type``, kept per searcher (a filter is reused across queries)."""
        if not bucket and not type:
            return None
        key = (bucket or "", type or "")
        found = self._filters.get(key)
        if found is None:
            terms = [query.Term(name, value) for name, value in (("bucket", bucket), ("type", type)) if value]
            found = set(searcher.docs_for_query(query.And(terms) if len(terms) > 1 else terms[0]))
            if len(self._filters) >= FILTERS_KEPT:
                self._filters.pop(next(iter(self._filters)))
            self._filters[key] = found
        return found

    def _mask(self, searcher: Searcher, bucket: str | None, type: str | None) -> np.ndarray | None:
        """:meth:`_filter` as one boolean per document (what :mod:`~fileproc.search.topk` takes)."""
        wanted = self._filter(searcher, bucket, type)
        if wanted is None:
            return None
        key = (bucket or "", type or "")
        found = self._masks.get(key)
        if found is None:
            found = np.zeros(searcher.doc_count_all(), dtype=bool)
            found[np.fromiter(wanted, dtype=np.int64, count=len(wanted))] = True
            if len(self._masks) >= FILTERS_KEPT:
                self._masks.pop(next(iter(self._masks)))
            self._masks[key] = found
        return found

    def search(self, query_text: str, *, bucket: str | None = None, type: str | None = None, page: int = 1,
               per_page: int = 10) -> SearchPage:
        """The ``page``-th ``per_page`` hits, best first.

        Only the hits up to this page are scored and collected, skipping the
        blocks of postings that cannot make it into them (plain words: by
        :mod:`~fileproc.search.topk`, the rest by Whoosh itself); the total
        is therefore exact when fewer documents matched than that, and an
        estimate (an upper bound from the terms' document frequencies) when
        more did: ``SearchPage.exact`` says which.
        """
        page, per_page = max(1, page), max(1, min(per_page, 1000))
        with self._lock:
            searcher = self._current_searcher()
            if searcher is not self._warm_checked:
                self._warm_checked = searcher
                self._warm_later(searcher)
            try:
                if self._parser is None:
                    self._parser = qparser.MultifieldParser(list(SEARCHED_FIELDS), searcher.schema)
                parsed = self._parsed.get(query_text)
                if parsed is None:
                    parsed = _words_query(searcher.schema, query_text)
                    if parsed is None:
                        parsed = self._parser.parse(query_text) if query_text.strip() else query.Every()
                    if len(self._parsed) >= PARSED_KEPT:
                        self._parsed.pop(next(iter(self._parsed)))
                    self._parsed[query_text] = parsed
                present = self._present or _Present(searcher.reader())
                parsed = _prune(parsed, present)
                wanted = self._filter(searcher, bucket, type)
                limit = page * per_page
                try:
                    best = topk.top_hits(self._topk, searcher, parsed, limit, self._mask(searcher, bucket, type))
                    estimate = lambda: parsed.estimate_size(searcher.reader())  # noqa: E731
                except (topk.Unsupported, AttributeError):  # AttributeError: Whoosh's internals not as topk reads them
                    results = searcher.search(parsed, limit=limit, filter=wanted)
                    best = [(results.score(n), results.docnum(n)) for n in range(results.scored_length())]
                    estimate = results.estimated_length
                scored = len(best)
                exact = scored < limit
                bound = len(wanted) if wanted is not None else searcher.doc_count()
                total = scored if exact else max(scored, min(estimate(), bound))
                shown = best[(page - 1) * per_page:limit]
                snippets = _Snippets(searcher, parsed, present) if shown else None
                hits = [_hit(searcher.stored_fields(docnum), score, snippets) for score, docnum in shown]
            except _READ_ERRORS as exc:
                self._searcher, self._ix = None, None
                raise IndexCorrupt(f"cannot search the index: {exc!r}") from exc
        return SearchPage(query_text, total, page, per_page, hits, exact)

    def close(self) -> None:
        self.reset()

    # --- reading ahead ------------------------------------------------------------------

    def wait_warm(self, timeout: float) -> bool:
        """Wait until the frequent words are read ahead (:meth:`_warm`); whether they are."""
        return self._warm_idle.wait(timeout)

    def _unwarmed(self, searcher: Searcher) -> list[Any]:
        """The searcher's segments big enough to read ahead (:data:`topk.WARM_SEGMENT_DOCS`), not read ahead yet."""
        return [reader for reader, _ in searcher.reader().leaf_readers()
                if reader.segment() is not None and reader.doc_count_all() >= topk.WARM_SEGMENT_DOCS
                and reader.segment().segment_id() not in self._warmed]

    def _warm_later(self, searcher: Searcher) -> None:
        """Start reading ahead in a thread, if a segment of ``searcher`` needs it. Under ``self._lock``."""
        if self.read_ahead and self._warmer is None and self._unwarmed(searcher):
            self._warm_idle.clear()
            self._warmer = threading.Thread(target=self._warm, name="fileproc-search-warm", daemon=True)
            self._warmer.start()

    def _warm(self) -> None:
        """Read ahead each new big segment's frequent words: block headers, and the most frequent ones'
        blocks decoded (:meth:`topk.Cache.warm`).

        The first search for a word in thousands of documents reads its
        block headers (a few ms for hundreds of blocks), and one for two such
        words decodes nearly all their blocks; a process serving searches
        (``read_ahead``: the API) reads them for each new segment in this
        thread instead, before anybody asks. Whoosh's files are not safe for two threads at
        once, so it holds the index lock for :data:`WARM_SLICE` at a time: a
        search waits that long at most. It starts over when the searcher
        changes (a commit landed).
        """
        try:
            while True:
                with self._lock:
                    searcher = self._searcher
                    todo = self._unwarmed(searcher) if searcher is not None else []
                    if not todo:
                        if searcher is not None:
                            self._warmed &= {r.segment().segment_id() for r, _ in searcher.reader().leaf_readers()
                                             if r.segment() is not None}
                        self._warmer = None
                        self._warm_idle.set()
                        return
                for reader in todo:
                    if not self._warm_segment(searcher, reader):
                        break  # the searcher changed: look again
        except Exception:  # never let the read-ahead take the process down; searches read what they need
            log.debug("reading block headers ahead failed", exc_info=True)
            with self._lock:
                self._warmer = None
                self._warm_idle.set()

    def _warm_segment(self, searcher: Searcher, reader: Any) -> bool:
        """Read ahead one segment, a slice at a time; False if the searcher changed meanwhile."""
        steps = self._topk.warm(reader, SEARCHED_FIELDS)
        while True:
            with self._lock:
                if self._searcher is not searcher:
                    return False
                deadline = time.monotonic() + WARM_SLICE
                try:
                    while time.monotonic() < deadline:
                        next(steps)
                except (StopIteration, *_READ_ERRORS):  # done, or a segment Whoosh cannot read: searches say so
                    self._warmed.add(reader.segment().segment_id())
                    return True


class _WhooshBatch(Batch):
    """A Whoosh writer kept open: each document is analyzed when staged, all are written at the commit."""

    def __init__(self, index: WhooshIndex, writer: Any) -> None:
        super().__init__(index)
        self.writer = writer

    def _stage(self, add: list[Document], delete: list[str]) -> None:
        try:
            for doc_id in delete:
                self.writer.delete_by_term("id", doc_id)
            for document in add:
                self.writer.update_document(**_fields(document, self.writer.schema))
        except _READ_ERRORS as exc:
            raise IndexCorrupt(f"cannot write the search index: {exc!r}") from exc

    def commit(self) -> None:
        try:
            self.writer.commit(mergetype=_merge_few)
        except _READ_ERRORS as exc:
            raise IndexCorrupt(f"cannot commit to the search index: {exc!r}") from exc

    def cancel(self) -> None:
        with contextlib.suppress(*_READ_ERRORS):
            self.writer.cancel()


def _prune(q: Any, present: Callable[[str, Any], bool]) -> Any:
    """``q`` without the alternatives of an OR that are words no document has in that field.

    A word is looked for in title, name and content, and it is rarely in
    all three: each alternative costs a matcher per segment, so a query of
    plain words is built three times over for nothing. Dropping an absent
    term changes no score and no match (only ANDs and ORs are entered).
    """
    if isinstance(q, query.Or | query.And):
        subs = [_prune(sub, present) for sub in q.subqueries]
        if isinstance(q, query.Or):
            subs = [sub for sub in subs if not (type(sub) is query.Term and not present(sub.fieldname, sub.text))]
            if not subs:
                return query.NullQuery
            if len(subs) == 1 and q.boost == 1.0 and not q.scale:
                return subs[0]
        pruned = copy.copy(q)
        pruned.subqueries = subs
        return pruned
    return q


class _Present:
    """Whether a word is in a field of the searcher's index, remembered (it is asked of every segment)."""

    def __init__(self, reader: Any) -> None:
        self.reader = reader
        self.known: dict[tuple[str, Any], bool] = {}

    def __call__(self, fieldname: str, text: Any) -> bool:
        key = (fieldname, text)
        found = self.known.get(key)
        if found is None:
            if len(self.known) >= PRESENT_KEPT:
                self.known.clear()
            found = self.known[key] = key in self.reader
        return found


SEARCHED_FIELDS = ("title", "name", "content")

_WORD = re.compile(r"\w+")
_OPERATORS = frozenset({"AND", "OR", "NOT", "ANDNOT", "ANDMAYBE", "TO"})


def _words_query(schema: Schema, text: str) -> Any:
    """What ``MultifieldParser(SEARCHED_FIELDS)`` makes of ``text`` when it is only words, made directly.

    Whoosh's parser takes about 0.3 ms for two words, as long as the rest of
    a search. Each word becomes an Or of its term in each field (each
    field's analyzer: lowercased, stemmed; a stop word dropped), several
    words an And of those. Anything else (operators, quotes, fields,
    wildcards, punctuation, a word the analyzer splits): None, and the parser runs.
    """
    parts = text.split()
    if not parts or not all(_WORD.fullmatch(word) and word not in _OPERATORS for word in parts):
        return None
    groups = []
    for word in parts:
        terms = []
        for name in SEARCHED_FIELDS:
            tokens = [token.text for token in schema[name].analyzer(word, mode="query")]
            if len(tokens) > 1:
                return None
            if tokens:
                terms.append(query.Term(name, tokens[0]))
        group = query.Or(terms) if len(terms) > 1 else terms[0] if terms else None
        if group is not None and group not in groups:  # the parser drops a repeated word
            groups.append(group)
    if not groups:
        return query.NullQuery
    return groups[0] if len(groups) == 1 else query.And(groups)


def _plain_terms(q: Any) -> list[query.Term] | None:
    """The Terms of a query made only of Terms, Ands and Ors (no boosts); None for anything else."""
    if type(q) is query.Term:
        return [q]
    if type(q) in (query.And, query.Or) and q.boost == 1.0:
        found: list[query.Term] = []
        for sub in q.subqueries:
            leaves = _plain_terms(sub)
            if leaves is None:
                return None
            found += leaves
        return found
    return None


def _unique(documents: Iterable[Document]) -> list[Document]:
    """The last of each id (what update() promised: a document added twice is replaced)."""
    return list({document.id: document for document in documents}.values())


def _merge_few(writer: Any, segments: list[Any]) -> list[Any]:
    """The merge policy of a commit: Whoosh's own (tiny segments together), then, while more than
    :data:`MAX_SEGMENTS` would be left, the smallest ones into the segment being written.

    A search walks every segment, and Whoosh picks its slow matcher for an OR (a word looked for in
    title, name and content) on segments of 5,000 documents or fewer; Whoosh alone never merges
    segments of a few thousand. Merging the smallest first keeps each merge's cost in proportion to
    what it merges (a big segment is rewritten only when as much was added after it).
    """
    kept = writing.MERGE_SMALL(writer, segments)
    if len(kept) <= MAX_SEGMENTS:
        return list(kept)
    ordered = sorted(kept, key=lambda segment: segment.doc_count_all())
    cut = len(ordered) - MAX_SEGMENTS + 1
    for segment in ordered[:cut]:
        writer.add_reader(SegmentReader(writer.storage, writer.schema, segment))
    return ordered[cut:]


def _hit(hit: dict[str, Any], score: float | None, snippets: _Snippets | None) -> Hit:
    excerpt = str(hit.get("content", ""))[:HIGHLIGHT_CHARS]
    snippet = snippets(excerpt) if snippets is not None else html.escape(excerpt[:SNIPPET_CHARS], quote=False)
    return Hit(bucket=hit["bucket"], key=hit["key"], score=round(float(score or 0.0), 4), snippet=snippet,
               type=hit.get("type", ""), title=hit.get("title", ""), size=int(hit.get("size") or 0),
               etag=hit.get("etag", ""))


def _fields(document: Document, into: Schema) -> dict[str, Any]:
    words = document.key.replace("/", " ").replace("_", " ").replace("-", " ").replace(".", " ")
    fields: dict[str, Any] = {
        "id": document.id, "bucket": document.bucket, "key": document.key, "type": document.type or "other",
        "content_type": document.content_type or "", "etag": document.etag, "size": document.size,
        "title": document.title, "name": words, "content": document.text,
    }
    content = into["content"]
    where = analysis.positions(document.terms)
    if where is not None and isinstance(content, AnalyzedText) and isinstance(content.format, Positions):
        fields["content"] = Analyzed(where)  # the step's words (an index made before them analyzes the text)
        fields["_stored_content"] = document.text[:STORED_CHARS]
    elif len(document.text) > STORED_CHARS:
        fields["_stored_content"] = document.text[:STORED_CHARS]
    if document.last_modified is not None:
        modified = document.last_modified
        fields["modified"] = modified.astimezone(UTC).replace(tzinfo=None) if modified.tzinfo else modified
    return fields


__all__ = ["STORED_CHARS", "Analyzed", "AnalyzedText", "WhooshIndex", "schema"]
