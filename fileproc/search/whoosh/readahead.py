"""Reading the frequent words of new segments ahead, in a thread, for a process that serves searches.

The first search for a word in thousands of documents reads its block
headers (a few ms for hundreds of blocks), and one for two such words
decodes nearly all their blocks; a process serving searches (the API)
reads them for each new segment in a thread instead, before anybody asks
(:meth:`~fileproc.search.whoosh.postings.Cache.warm`). Whoosh's files are not
safe for two threads at once, so the thread holds the index's lock for
:data:`WARM_SLICE` at a time: a search waits that long at most. It starts
over when the searcher changes (a commit landed).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from whoosh.searching import Searcher

from fileproc.search.whoosh import postings
from fileproc.search.whoosh.files import READ_ERRORS
from fileproc.search.whoosh.schema import SEARCHED_FIELDS

log = logging.getLogger(__name__)

WARM_SLICE = 0.002
"""Seconds the read-ahead holds the index at a time (a search waits at most this long)."""


class ReadAhead:
    """Reads ahead each new big segment of the searcher ``current()`` returns, into ``cache``.

    ``lock`` is the index's: every step of the reading holds it, as searches do.
    """

    def __init__(self, cache: postings.Cache, lock: threading.Lock, current: Callable[[], Searcher | None]) -> None:
        self.cache = cache
        self._lock = lock
        self._current = current
        self._thread: threading.Thread | None = None
        self._warmed: set[str] = set()  # segments whose frequent words were read ahead
        self._checked: Searcher | None = None
        self._idle = threading.Event()
        self._idle.set()

    @property
    def running(self) -> bool:
        return self._thread is not None

    def wait(self, timeout: float) -> bool:
        """Wait until the frequent words are read ahead; whether they are."""
        return self._idle.wait(timeout)

    def notice(self, searcher: Searcher) -> None:
        """Start reading ahead in a thread, once per searcher, if a segment of it needs it. Under the lock."""
        if searcher is self._checked:
            return
        self._checked = searcher
        if self._thread is None and self._unwarmed(searcher):
            self._idle.clear()
            self._thread = threading.Thread(target=self._run, name="fileproc-search-warm", daemon=True)
            self._thread.start()

    def _unwarmed(self, searcher: Searcher) -> list[Any]:
        """The searcher's segments big enough to read ahead (:data:`postings.WARM_SEGMENT_DOCS`), not read ahead yet."""
        return [reader for reader, _ in searcher.reader().leaf_readers()
                if reader.segment() is not None and reader.doc_count_all() >= postings.WARM_SEGMENT_DOCS
                and reader.segment().segment_id() not in self._warmed]

    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    searcher = self._current()
                    todo = self._unwarmed(searcher) if searcher is not None else []
                    if not todo:
                        if searcher is not None:
                            self._warmed &= {r.segment().segment_id() for r, _ in searcher.reader().leaf_readers()
                                             if r.segment() is not None}
                        self._done()
                        return
                for reader in todo:
                    if not self._segment(searcher, reader):
                        break  # the searcher changed: look again
        except Exception:  # never let the read-ahead take the process down; searches read what they need
            log.debug("reading block headers ahead failed", exc_info=True)
            with self._lock:
                self._done()

    def _done(self) -> None:
        """Under the lock."""
        self._thread = None
        self._idle.set()

    def _segment(self, searcher: Searcher | None, reader: Any) -> bool:
        """Read ahead one segment, a slice at a time; False if the searcher changed meanwhile."""
        steps = self.cache.warm(reader, SEARCHED_FIELDS)
        while True:
            with self._lock:
                if self._current() is not searcher:
                    return False
                deadline = time.monotonic() + WARM_SLICE
                try:
                    while time.monotonic() < deadline:
                        next(steps)
                except (StopIteration, *READ_ERRORS):  # done, or a segment Whoosh cannot read: searches say so
                    self._warmed.add(reader.segment().segment_id())
                    return True


__all__ = ["WARM_SLICE", "ReadAhead"]
