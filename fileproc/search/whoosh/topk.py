"""The top hits of plain word queries, scored a posting block at a time (numpy) instead of a posting at a time.

Whoosh finds the best ``limit`` hits by walking each posting list one
document at a time in Python (several method calls per posting), skipping
the blocks of 128 postings whose best possible score cannot make the page
("block-max" skipping). For a word in most documents that still scores a
few thousand postings per query, 10-15 ms on 100k documents.

This module does the same search on Whoosh's own files, with the same
BM25F scores (the same formula on the same numbers: the searcher's idf and
average field length, the posting's weight, the document's field length as
Whoosh stores it), for the query shapes a search box produces once
:func:`~fileproc.search.whoosh.queries.prune` dropped absent words:

- one word in one field (``Term``);
- all of several words (``And`` of ``Term``), each in one field.

Everything else (OR of words, phrases, wildcards, ranges, boosts, another
weighting) returns None here, and Whoosh's own search runs.

How it differs from Whoosh's walk: the block headers of a term (last
document, best weight, shortest field length of each block) are read once
and kept (:class:`~fileproc.search.whoosh.postings.Headers`, bounded); from them every block's best possible
score is computed at once, and blocks are visited **best bound first**. The
page's threshold (its last hit's score) rises within the first few blocks,
and the search stops at the first block whose bound is below it: that and
every later block cannot place a hit. A visited block is decoded and scored
whole with numpy. For ``And``, the blocks of the rarest word drive; a
block's bound is its own plus, for each other word, the best bound of that
word's blocks that overlap its documents. Hits are ordered as Whoosh orders
them: higher score first, then lower document number.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from whoosh import query
from whoosh.scoring import BM25F

from fileproc.search.whoosh.postings import Cache, Headers, Unsupported


def _field(schema: Any, name: str) -> Any:
    try:
        return schema[name]
    except KeyError:
        return None


def _terms(q: Any) -> list[query.Term] | None:
    """The words of a supported query: a Term, or an And of Terms (no boosts); None otherwise."""
    if type(q) is query.Term:
        return [q] if q.boost == 1.0 else None
    if type(q) is query.And and q.boost == 1.0:
        subs = list(q.subqueries)
        if len(subs) >= 2 and all(type(s) is query.Term and s.boost == 1.0 for s in subs):
            return subs
    return None


class _Leaf:
    """One segment of the searcher, with what this query needs of it."""

    def __init__(self, cache: Cache, searcher: Any, offset: int, allowed: np.ndarray | None) -> None:
        self.searcher = searcher
        self.reader = searcher.reader()
        self.offset = offset
        self.doccount = self.reader.doc_count_all()
        self.postfile = self.reader._terms._postfile
        deleted = self.reader.deleted_docs_set if self.reader.has_deletions() else ()
        if allowed is not None:
            mask = allowed[offset:offset + self.doccount].copy()
        elif deleted:
            mask = np.ones(self.doccount, dtype=bool)
        else:
            mask = None
        if deleted:
            assert mask is not None
            mask[np.fromiter(deleted, dtype=np.int64, count=len(deleted))] = False
        self.allowed = mask
        self.cache = cache


class _Term:
    """One word of the query: its scoring constants and, per segment, its blocks and their bounds."""

    def __init__(self, top: Any, term: query.Term) -> None:
        field = _field(top.schema, term.fieldname)
        if field is None or not field.scorable:
            raise Unsupported("not a scored field")
        self.fieldname = term.fieldname
        self.tbytes = field.to_bytes(term.text)
        # What whoosh.scoring.BM25FScorer takes from the searcher and the weighting
        weighting = top.weighting
        self.idf = top.idf(term.fieldname, self.tbytes)
        self.avgfl = top.avg_field_length(term.fieldname) or 1
        self.B = weighting._field_B.get(term.fieldname, weighting.B)
        self.K1 = weighting.K1

    def score(self, weights: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """whoosh.scoring.bm25, the same operations in the same order."""
        idf, K1, B = self.idf, self.K1, self.B
        return idf * ((weights * (K1 + 1)) / (weights + K1 * ((1 - B) + B * lengths / self.avgfl)))


class _Top:
    """The best ``limit`` (score, document) pairs so far, Whoosh's order: score down, then document up."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.scores = np.empty(0, dtype=np.float64)
        self.docs = np.empty(0, dtype=np.int64)
        self.threshold = -np.inf  # the last hit's score (once full): below it nothing can enter
        self.last_doc = -1  # the last hit's document: a tie enters only before it

    @property
    def full(self) -> bool:
        return len(self.scores) >= self.limit

    def add(self, scores: np.ndarray, docs: np.ndarray) -> None:
        if self.full:
            keep = scores >= self.threshold
            scores, docs = scores[keep], docs[keep]
        if not len(scores):
            return
        self.scores = np.concatenate((self.scores, scores))
        self.docs = np.concatenate((self.docs, docs))
        if len(self.scores) > self.limit:
            order = np.lexsort((self.docs, -self.scores))[:self.limit]
            self.scores, self.docs = self.scores[order], self.docs[order]
        if self.full:
            last = np.lexsort((self.docs, -self.scores))[-1]
            self.threshold, self.last_doc = float(self.scores[last]), int(self.docs[last])

    def beats(self, bound: float, first_doc: int) -> bool:
        """Whether a block whose best score is ``bound`` and first document ``first_doc`` may place a hit."""
        return not self.full or bound > self.threshold or (bound == self.threshold and first_doc < self.last_doc)

    def sorted(self) -> list[tuple[float, int]]:
        order = np.lexsort((self.docs, -self.scores))
        return [(float(self.scores[i]), int(self.docs[i])) for i in order]


def top_hits(cache: Cache, searcher: Any, q: Any, limit: int, allowed: np.ndarray | None) -> list[tuple[float, int]]:
    """The best ``limit`` (score, document number) of ``q``, best first; raises Unsupported.

    ``allowed`` is a boolean per document of the searcher (a bucket or type
    filter), or None for all.
    """
    if q is query.NullQuery:
        return []  # every word absent
    words = _terms(q)
    if words is None or type(searcher.weighting) is not BM25F or searcher.weighting.use_final:
        raise Unsupported("not a plain word query")
    try:
        terms = [_Term(searcher, word) for word in words]
    except ValueError:
        return []  # a word the field cannot hold (Whoosh: matches nothing)
    leaves = [_Leaf(cache, sub, offset, allowed) for sub, offset in searcher.leaf_searchers()
              if sub.doc_count_all()]
    if any(leaf.reader.segment() is None for leaf in leaves):
        raise Unsupported("a reader without a segment")
    top = _Top(limit)
    if len(terms) == 1:
        _one_term(top, leaves, terms[0])
    else:
        _all_terms(top, leaves, terms)
    return top.sorted()


def _one_term(top: _Top, leaves: list[_Leaf], term: _Term) -> None:
    bounds, where, per_leaf, firsts_all = [], [], [], []
    for n, leaf in enumerate(leaves):
        headers = leaf.cache.headers(leaf.reader, term.fieldname, term.tbytes)
        per_leaf.append(headers)
        if headers is None or not len(headers):
            continue
        bounds.append(term.score(headers.max_weight, headers.min_length))
        firsts_all.append(headers.first_ids() + leaf.offset)
        where.append(np.column_stack((np.full(len(headers), n), np.arange(len(headers)))))
    if not bounds:
        return
    bound = np.concatenate(bounds)
    blocks = np.concatenate(where)
    firsts = np.concatenate(firsts_all)
    for i in np.argsort(-bound, kind="stable"):  # equal bounds: in document order
        if not top.beats(bound[i], firsts[i]):
            break  # this block and every later one cannot place a hit
        leaf, headers = leaves[blocks[i, 0]], per_leaf[blocks[i, 0]]
        ids, weights = headers.decode(leaf.postfile, int(blocks[i, 1]))
        if leaf.allowed is not None:
            keep = leaf.allowed[ids]
            ids, weights = ids[keep], weights[keep]
        if len(ids):
            scores = term.score(weights, leaf.cache.lengths(leaf.reader, term.fieldname, ids))
            top.add(scores, ids + leaf.offset)


def _all_terms(top: _Top, leaves: list[_Leaf], terms: list[_Term]) -> None:
    """All the words: the rarest word's blocks drive, best bound first.

    A driver block's bound is its own plus, for each other word, the best
    bound of that word's blocks overlapping it (:meth:`_LeafWords.bounds`).
    A visited driver block is scored by :meth:`_LeafWords.score_block`.
    """
    plans = []  # (bound, first document, leaf number, driver block)
    per_leaf: list[_LeafWords | None] = []
    for n, leaf in enumerate(leaves):
        found = [leaf.cache.headers(leaf.reader, t.fieldname, t.tbytes) for t in terms]
        if any(h is None or not len(h) for h in found):
            per_leaf.append(None)
            continue
        words = _LeafWords(leaf, terms, [h for h in found if h is not None])
        per_leaf.append(words)
        bound, lo = words.bounds(), words.headers[words.driver].first_ids()
        plans += [(float(bound[j]), int(lo[j]) + leaf.offset, n, int(j)) for j in np.flatnonzero(np.isfinite(bound))]
    plans.sort(key=lambda p: (-p[0], p[1]))
    for block_bound, first, n, j in plans:
        if not top.beats(block_bound, first):
            break
        planned = per_leaf[n]
        assert planned is not None  # a leaf without every word has no plans
        planned.score_block(top, j)


class _LeafWords:
    """Every word of an And in one segment: their blocks, the driver (the rarest word) and each word's bounds."""

    def __init__(self, leaf: _Leaf, terms: list[_Term], headers: list[Headers]) -> None:
        self.leaf, self.terms, self.headers = leaf, terms, headers
        self.driver = min(range(len(terms)), key=lambda i: headers[i].docs)
        # Each word's best score per block, and -inf past its last block (a document no block would hold)
        self.quality = [np.append(t.score(h.max_weight, h.min_length), -np.inf)
                        for t, h in zip(terms, headers, strict=True)]
        self._decoded: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}  # each block once per query

    def bounds(self) -> np.ndarray:
        """Each driver block's best possible total: its own bound plus, for each other word, the best bound
        of that word's blocks overlapping it (-inf where one holds none of its documents)."""
        d = self.headers[self.driver]
        bound = self.quality[self.driver][:-1]
        lo, hi = d.first_ids(), d.max_id
        for i, h in enumerate(self.headers):
            if i == self.driver:
                continue
            start = np.searchsorted(h.max_id, lo, side="left")
            end = np.minimum(np.searchsorted(h.max_id, hi, side="left"), len(h) - 1)  # the block holding hi
            inside = start < len(h)
            best = np.full(len(d), -np.inf)
            if inside.any():
                pairs = np.empty(2 * int(inside.sum()), dtype=np.int64)
                pairs[0::2], pairs[1::2] = start[inside], end[inside] + 1
                best[inside] = np.maximum.reduceat(self.quality[i], pairs)[0::2]
            bound = bound + best
        return bound

    def score_block(self, top: _Top, block: int) -> None:
        """Score the documents of driver block ``block`` that hold every word, into ``top``.

        The block is decoded and its documents scored for the driver word;
        once the page is full, a document whose own score plus the best of
        the other words' blocks that would hold it cannot place a hit is
        dropped before those blocks are read. Only the other words' blocks
        that would hold a remaining document are decoded (each once per
        query), and the documents found in all of them are scored.
        """
        leaf, terms, driver = self.leaf, self.terms, self.driver
        ids, weights = self.headers[driver].decode(leaf.postfile, block)
        if leaf.allowed is not None:
            keep = leaf.allowed[ids]
            ids, weights = ids[keep], weights[keep]
        holding = {i: np.searchsorted(h.max_id, ids, side="left") for i, h in enumerate(self.headers) if i != driver}
        scores = {driver: terms[driver].score(weights, leaf.cache.lengths(leaf.reader, terms[driver].fieldname, ids))}
        if top.full and len(ids):
            keep = self._may_place(top, ids, scores[driver], holding)
            ids, scores[driver] = ids[keep], scores[driver][keep]
            holding = {i: at[keep] for i, at in holding.items()}
        for i in range(len(terms)):
            if i == driver or not len(ids):
                continue
            ids, scores, holding = self._join(i, ids, scores, holding)
        if not len(ids) or len(scores) < len(terms):
            return
        total = None
        for k in range(len(terms)):  # the query's order: a + b (+ c ...)
            total = scores[k] if total is None else total + scores[k]
        assert total is not None
        top.add(total, ids + leaf.offset)

    def _may_place(self, top: _Top, ids: np.ndarray, driver_scores: np.ndarray,
                   holding: dict[int, np.ndarray]) -> np.ndarray:
        """Which of ``ids`` may still place a hit: each document's best possible total, in the query's order of
        words (the driver's score, the others' block bounds), against the page's last hit."""
        most: np.ndarray | None = None
        for k in range(len(self.terms)):
            part = driver_scores if k == self.driver else self.quality[k][holding[k]]
            most = part if most is None else most + part
        assert most is not None
        docs = ids + self.leaf.offset
        kept: np.ndarray = (most > top.threshold) | ((most == top.threshold) & (docs < top.last_doc))
        return kept

    def _join(self, i: int, ids: np.ndarray, scores: dict[int, np.ndarray], holding: dict[int, np.ndarray]
              ) -> tuple[np.ndarray, dict[int, np.ndarray], dict[int, np.ndarray]]:
        """``ids`` that word ``i`` is in too, with its scores added (what is kept of ``scores`` and ``holding``)."""
        h, leaf = self.headers[i], self.leaf
        blocks = []
        for b in np.unique(holding[i][holding[i] < len(h)]).tolist():
            if (i, b) not in self._decoded:
                self._decoded[(i, b)] = h.decode(leaf.postfile, b)
            blocks.append(self._decoded[(i, b)])
        if not blocks:
            return ids[:0], scores, holding
        other_ids = np.concatenate([b[0] for b in blocks]) if len(blocks) > 1 else blocks[0][0]
        other_weights = np.concatenate([b[1] for b in blocks]) if len(blocks) > 1 else blocks[0][1]
        at = np.minimum(np.searchsorted(other_ids, ids), len(other_ids) - 1)
        keep = other_ids[at] == ids
        ids = ids[keep]
        scores = {k: v[keep] for k, v in scores.items()}
        holding = {k: v[keep] for k, v in holding.items()}
        lengths = leaf.cache.lengths(leaf.reader, self.terms[i].fieldname, ids)
        scores[i] = self.terms[i].score(other_weights[at[keep]], lengths)
        return ids, scores, holding


__all__ = ["Unsupported", "top_hits"]
