"""The words of a document's content as the index stores them, made by the step that extracts it.

Part of the function interface: what a function that writes a search
document (the built-in ``index``, or a user's) may add to it. It uses
Whoosh's analyzers, the index's own; ``import fileproc.functions`` alone
does not load them.

Analyzing a text (splitting it into words, dropping stop words, stemming)
is about a third of what indexing it costs, and the index has one writer.
So the ``index`` step analyzes the text it extracts, on whatever worker runs
it, and puts the result in the document object; the indexer then only
writes. A document object's ``terms``::

    {"analyzer": "whoosh-2.7.5/stemming-1", "start": 1, "content": "quick brown fox jump"}

``content`` is the analyzed words in order, one space between them; the
first is at position ``start`` and each next one a position further (the
stemming analyzer numbers the words it keeps that way). The indexer uses
them only when ``analyzer`` is its own (:data:`ANALYZER`): a document
written by another version analyzes its text again. They are not trusted
further than the text beside them: they can only change how that one
document is found.

Example::

    >>> found = terms("The quick brown foxes")
    >>> found["start"], found["content"]
    (1, 'quick brown fox')
    >>> positions(found)
    {'quick': [1], 'brown': [2], 'fox': [3]}
"""

from __future__ import annotations

import functools
from typing import Any

import whoosh
from whoosh.analysis import (
    Analyzer,
    LowercaseFilter,
    RegexTokenizer,
    StemFilter,
    StemmingAnalyzer,
    StopFilter,
)

ANALYZER = f"whoosh-{whoosh.versionstring()}/stemming-1"
"""Names the analyzer below: change the suffix when it changes, so older terms are analyzed again."""

STEMS_KEPT = 50_000
"""Stems remembered per process (what Whoosh's stem filter keeps too)."""


@functools.cache
def content_analyzer() -> Analyzer:
    """The analyzer of the index's text fields (content, title, name)."""
    return StemmingAnalyzer()


def terms(text: str) -> dict[str, Any] | None:
    """``text``'s analyzed words (see the module docstring), or None if they cannot be written that way."""
    words = _words(text)
    if words is None:
        return None
    start, found = words
    content = " ".join(found)
    if not all(found) or content.count(" ") != max(len(found) - 1, 0):
        return None  # an empty word, or one a space cannot separate: the indexer analyzes the text
    return {"analyzer": ANALYZER, "start": start, "content": content}


def _words(text: str) -> tuple[int, list[str]] | None:
    """The position of the first word kept and the words, as :func:`content_analyzer` makes them.

    Whoosh's analyzer passes each word through a chain of generators, a
    Token object each: most of a step's time. Its parts are taken from the
    analyzer itself (the tokenizer's expression, the stop words and sizes,
    the stemmer) and applied in a plain loop, with the stems cached in C;
    the words are the same (the tests compare them). A chain of another
    shape goes through Whoosh.
    """
    parts = _parts()
    if parts is None:
        return _words_by_whoosh(text)
    finditer, stops, minsize, maxsize, ignore, stem = parts
    start, words = 0, list[str]()
    for number, match in enumerate(finditer(text)):
        word = match.group().lower()
        if len(word) < minsize or (maxsize is not None and len(word) > maxsize) or word in stops:
            continue
        if not words:
            start = number  # the stop filter numbers the kept words on from the first one's position
        words.append(word if word in ignore else stem(word))
    return start, words


def _words_by_whoosh(text: str) -> tuple[int, list[str]] | None:
    start, expected, words = 0, None, list[str]()
    for token in content_analyzer()(text, positions=True, mode="index"):
        if expected is None:
            start = expected = token.pos
        if token.pos != expected:
            return None  # a gap: the indexer analyzes the text
        words.append(token.text)
        expected += 1
    return start, words


@functools.cache
def _parts() -> tuple[Any, ...] | None:
    """The analyzer's tokenizer expression, stop words, sizes, unstemmed words and stemmer; None if it is not
    the tokenizer, lowercase, stop and stem chain this module knows."""
    chain = content_analyzer()
    items = list(getattr(chain, "items", ()))
    if [type(item) for item in items] != [RegexTokenizer, LowercaseFilter, StopFilter, StemFilter]:
        return None
    tokenizer, _, stop, stemmer = items
    if tokenizer.gaps or not stop.renumber or stemmer.lang:
        return None
    stem = functools.lru_cache(maxsize=STEMS_KEPT)(stemmer.stemfn)
    return tokenizer.expression.finditer, stop.stops, stop.min, stop.max, stemmer.ignore, stem


def positions(found: Any) -> dict[str, list[int]] | None:
    """Word -> its positions, from a document object's ``terms``; None if they are not this analyzer's."""
    if not isinstance(found, dict) or found.get("analyzer") != ANALYZER:
        return None
    start, content = found.get("start"), found.get("content")
    if not isinstance(start, int) or isinstance(start, bool) or start < 0 or not isinstance(content, str):
        return None
    where: dict[str, list[int]] = {}
    for position, word in enumerate(content.split(" ") if content else (), start):
        if not word:
            return None
        where.setdefault(word, []).append(position)
    return where


__all__ = ["ANALYZER", "content_analyzer", "positions", "terms"]
