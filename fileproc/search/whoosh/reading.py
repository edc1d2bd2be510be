"""One searcher and what is kept for it between searches; a query's best hits on it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from whoosh import query
from whoosh.searching import Searcher

from fileproc.search.whoosh import postings, topk
from fileproc.search.whoosh.queries import Present

FILTERS_KEPT = 32
"""Bucket/type filters (sets of document numbers) kept per searcher."""


class Reading:
    """A searcher, with the words known present or absent and the bucket/type filters of its documents.

    Document numbers change with the segments, so all of it is for this
    searcher only: a new searcher (a commit landed) gets a new Reading.
    """

    def __init__(self, searcher: Searcher) -> None:
        self.searcher = searcher
        self.present = Present(searcher.reader())
        self._filters: dict[tuple[str, str], set[int]] = {}
        self._masks: dict[tuple[str, str], np.ndarray] = {}

    def segment_ids(self) -> set[str]:
        return {r.segment().segment_id() for r, _ in self.searcher.reader().leaf_readers() if r.segment() is not None}

    def filter(self, bucket: str | None, type: str | None) -> set[int] | None:
        """The document numbers in ``bucket`` / of ``type``, kept (a filter is reused across queries)."""
        if not bucket and not type:
            return None
        key = (bucket or "", type or "")
        found = self._filters.get(key)
        if found is None:
            terms = [query.Term(name, value) for name, value in (("bucket", bucket), ("type", type)) if value]
            found = set(self.searcher.docs_for_query(query.And(terms) if len(terms) > 1 else terms[0]))
            if len(self._filters) >= FILTERS_KEPT:
                self._filters.pop(next(iter(self._filters)))
            self._filters[key] = found
        return found

    def mask(self, bucket: str | None, type: str | None) -> np.ndarray | None:
        """:meth:`filter` as one boolean per document (what :mod:`~fileproc.search.whoosh.topk` takes)."""
        wanted = self.filter(bucket, type)
        if wanted is None:
            return None
        key = (bucket or "", type or "")
        found = self._masks.get(key)
        if found is None:
            found = np.zeros(self.searcher.doc_count_all(), dtype=bool)
            found[np.fromiter(wanted, dtype=np.int64, count=len(wanted))] = True
            if len(self._masks) >= FILTERS_KEPT:
                self._masks.pop(next(iter(self._masks)))
            self._masks[key] = found
        return found

    def best(self, cache: postings.Cache, parsed: Any, limit: int, bucket: str | None,
             type: str | None) -> tuple[list[tuple[float, int]], int, bool]:
        """The best ``limit`` (score, document number) of ``parsed``, how many matched, and whether that is exact.

        Plain words are scored by :mod:`~fileproc.search.whoosh.topk`, the
        rest by Whoosh itself; either collects only the hits up to ``limit``,
        so past that the total is an estimate (an upper bound from the
        terms' document frequencies).
        """
        searcher = self.searcher
        wanted = self.filter(bucket, type)
        estimate: Callable[[], int]
        try:
            best = topk.top_hits(cache, searcher, parsed, limit, self.mask(bucket, type))
            estimate = lambda: parsed.estimate_size(searcher.reader())  # noqa: E731
        except (topk.Unsupported, AttributeError):  # AttributeError: Whoosh's internals not as topk reads them
            results = searcher.search(parsed, limit=limit, filter=wanted)
            best = [(results.score(n), results.docnum(n)) for n in range(results.scored_length())]
            estimate = results.estimated_length
        scored = len(best)
        exact = scored < limit
        bound = len(wanted) if wanted is not None else searcher.doc_count()
        total = scored if exact else max(scored, min(estimate(), bound))
        return best, total, exact


__all__ = ["FILTERS_KEPT", "Reading"]
