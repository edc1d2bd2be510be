""":class:`WhooshIndex`: the Whoosh engine behind :class:`~fileproc.search.SearchIndex`."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from whoosh import index
from whoosh.searching import Searcher

from fileproc.search import Document, IndexCorrupt, SearchIndex, SearchPage
from fileproc.search.whoosh import files, postings
from fileproc.search.whoosh.files import READ_ERRORS
from fileproc.search.whoosh.queries import Parser, prune
from fileproc.search.whoosh.readahead import ReadAhead
from fileproc.search.whoosh.reading import Reading
from fileproc.search.whoosh.snippets import Snippets, hit
from fileproc.search.whoosh.writing import WhooshBatch, unique, write_all

MAX_PER_PAGE = 1000


class WhooshIndex(SearchIndex):
    """A Whoosh index in ``directory`` (laid out as :mod:`~fileproc.search.whoosh.files` says); made empty on first use.

    Searches share one searcher, refreshed when a commit landed. Writes go
    through :meth:`update` only, which the one indexer of the host calls.
    ``read_ahead``: read the frequent words of new segments ahead
    (:mod:`~fileproc.search.whoosh.readahead`), for a process serving searches.
    """

    def __init__(self, directory: Path, *, read_ahead: bool = False) -> None:
        self.directory = Path(directory)
        self._lock = threading.Lock()
        self._ix: Any = None
        self._reading: Reading | None = None
        self._parser = Parser()
        self._postings = postings.Cache()
        self._read_ahead = ReadAhead(self._postings, self._lock, self._searcher) if read_ahead else None

    # --- files --------------------------------------------------------------------------

    @property
    def current(self) -> Path:
        return files.current(self.directory)

    def exists(self) -> bool:
        """Whether an index is there (readable or not: opening it says that)."""
        return files.exists(self.directory)

    def _open(self) -> Any:
        if self._ix is None:
            if not self.exists():
                self._install(files.new_generation(self.directory))
            try:
                self._ix = index.open_dir(str(self.current))
            except READ_ERRORS as exc:
                raise IndexCorrupt(f"cannot open the search index in {self.current}: {exc!r}") from exc
        return self._ix

    def _install(self, generation: Path) -> None:
        files.install(self.directory, generation)
        self._ix = None

    def reset(self) -> None:
        """Forget open handles (after another process rebuilt the index)."""
        with self._lock:
            if self._reading is not None:
                self._reading.searcher.close()
            self._reading, self._ix = None, None

    def close(self) -> None:
        self.reset()

    # --- writing ------------------------------------------------------------------------

    def update(self, add: Iterable[Document] = (), delete: Iterable[str] = ()) -> None:
        adds = unique(add)
        added = {document.id for document in adds}
        batch = self.begin()
        try:
            batch.stage(add=adds, delete=[i for i in dict.fromkeys(delete) if i not in added])
        except BaseException:
            batch.cancel()
            raise
        batch.commit()

    def begin(self) -> WhooshBatch:
        return WhooshBatch(self, self._open())

    def rebuild(self, documents: Iterable[Document]) -> int:
        generation = files.new_generation(self.directory)
        try:
            count = write_all(generation, documents)
        except BaseException:
            shutil.rmtree(generation, ignore_errors=True)
            raise
        self.reset()
        self._install(generation)
        return count

    # --- reading ------------------------------------------------------------------------

    def _searcher(self) -> Searcher | None:
        """The searcher in use, if any (for the read-ahead, under ``self._lock``)."""
        return self._reading.searcher if self._reading is not None else None

    def _current(self) -> Reading:
        """The searcher of the index as committed now, with what is kept for it. Under ``self._lock``."""
        try:
            if self._reading is not None and not self._reading.searcher.up_to_date():
                # A new searcher, not Searcher.refresh(): that reuses segment readers and
                # so misses deletions committed to a segment it already had open.
                self._reading.searcher.close()
                self._reading = None
            if self._reading is None:
                self._reading = Reading(self._open().searcher())
                self._postings.forget(self._reading.segment_ids())
        except READ_ERRORS as exc:
            self._reading, self._ix = None, None
            raise IndexCorrupt(f"cannot read the search index: {exc!r}") from exc
        return self._reading

    def _current_searcher(self) -> Searcher:
        return self._current().searcher

    def count(self) -> int:
        with self._lock:
            return int(self._current_searcher().doc_count())

    def versions(self) -> dict[str, str]:
        with self._lock:
            searcher = self._current_searcher()
            return {fields["id"]: fields.get("etag", "") for fields in searcher.all_stored_fields()}

    def search(self, query_text: str, *, bucket: str | None = None, type: str | None = None, page: int = 1,
               per_page: int = 10) -> SearchPage:
        """The ``page``-th ``per_page`` hits, best first.

        Only the hits up to this page are scored and collected, skipping the
        blocks of postings that cannot make it into them (:meth:`Reading.best`);
        the total is therefore exact when fewer documents matched than that,
        and an estimate when more did: ``SearchPage.exact`` says which.
        """
        page, per_page = max(1, page), max(1, min(per_page, MAX_PER_PAGE))
        with self._lock:
            reading = self._current()
            if self._read_ahead is not None:
                self._read_ahead.notice(reading.searcher)
            try:
                searcher = reading.searcher
                parsed = prune(self._parser.parse(searcher.schema, query_text), reading.present)
                best, total, exact = reading.best(self._postings, parsed, page * per_page, bucket, type)
                shown = best[(page - 1) * per_page:]
                snippets = Snippets(searcher, parsed, reading.present) if shown else None
                hits = [hit(searcher.stored_fields(docnum), score, snippets) for score, docnum in shown]
            except READ_ERRORS as exc:
                self._reading, self._ix = None, None
                raise IndexCorrupt(f"cannot search the index: {exc!r}") from exc
        return SearchPage(query_text, total, page, per_page, hits, exact)

    # --- reading ahead ------------------------------------------------------------------

    def wait_warm(self, timeout: float) -> bool:
        """Wait until the frequent words are read ahead (:mod:`~fileproc.search.whoosh.readahead`); whether they are."""
        return self._read_ahead.wait(timeout) if self._read_ahead is not None else True


__all__ = ["WhooshIndex"]
