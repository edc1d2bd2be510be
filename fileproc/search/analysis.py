"""The words of a document's content as the index stores them, made by the step that extracts it.

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
from whoosh.analysis import Analyzer, StemmingAnalyzer

ANALYZER = f"whoosh-{whoosh.versionstring()}/stemming-1"
"""Names the analyzer below: change the suffix when it changes, so older terms are analyzed again."""


@functools.cache
def content_analyzer() -> Analyzer:
    """The analyzer of the index's text fields (content, title, name)."""
    return StemmingAnalyzer()


def terms(text: str) -> dict[str, Any] | None:
    """``text``'s analyzed words (see the module docstring), or None if they cannot be written that way."""
    words: list[str] = []
    start = expected = None
    for token in content_analyzer()(text, positions=True, mode="index"):
        if start is None:
            start = expected = token.pos
        if token.pos != expected or not token.text or " " in token.text:
            return None  # a gap, or a word a space cannot separate: the indexer analyzes the text
        words.append(token.text)
        expected += 1
    return {"analyzer": ANALYZER, "start": start or 0, "content": " ".join(words)}


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
