"""Highlighted snippets of a query's hits, and a stored document as a :class:`~fileproc.search.Hit`."""

from __future__ import annotations

import contextlib
import html
import re
from collections.abc import Callable
from typing import Any

from whoosh.searching import Searcher

from fileproc.search import Hit
from fileproc.search.whoosh.files import READ_ERRORS
from fileproc.search.whoosh.queries import plain_terms

SNIPPET_CHARS = 240

SNIPPET_SURROUND = 60
"""Characters of context before the first and after the last match of a fragment."""

HIGHLIGHT_CHARS = 20_000
"""The start of a hit's stored text that highlighting looks at (a match further in gives the plain start)."""

HIGHLIGHT_TERMS = 50
"""Most query terms highlighted (a prefix query may expand to many)."""

MATCHES_KEPT = 64
"""Matches of a hit's text looked at for its fragments."""


class Snippets:
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
        self.words = frozenset(_words(searcher, parsed, present))
        starts = sorted({word[:max(3, len(word) - 2)] for word in self.words}, key=len, reverse=True)
        self.candidates = (re.compile(r"\b(?:" + "|".join(map(re.escape, starts)) + r")\w*", re.IGNORECASE)
                           if starts else None)
        self.confirmed: dict[str, bool] = {}

    def _is_term(self, word: str) -> bool:
        found = self.confirmed.get(word)
        if found is None:
            found = any(token.text in self.words for token in self.analyzer(word))
            self.confirmed[word] = found
        return found

    def _matches(self, text: str) -> list[tuple[int, int, str]]:
        """(start, end, word) of the query's words in ``text``, the first :data:`MATCHES_KEPT`."""
        matches: list[tuple[int, int, str]] = []
        if self.candidates is not None:
            for match in self.candidates.finditer(text):
                if self._is_term(match.group()):
                    matches.append((match.start(), match.end(), match.group().lower()))
                    if len(matches) >= MATCHES_KEPT:
                        break
        return matches

    def __call__(self, text: str) -> str:
        matches = self._matches(text)
        if not matches:
            return html.escape(text[:SNIPPET_CHARS], quote=False)
        best = sorted(sorted(_fragments(text, matches), key=lambda f: -f[0])[:2], key=lambda f: f[1])
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


def _words(searcher: Searcher, parsed: Any, present: Callable[[str, Any], bool] | None) -> set[str]:
    """The query's words found in the content field (at most :data:`HIGHLIGHT_TERMS` of an expanded query)."""
    words: set[str] = set()
    leaves = plain_terms(parsed)
    if leaves is not None and present is not None:  # words only: what existing_terms gives, remembered
        return {str(t.text) for t in leaves if t.fieldname == "content" and present("content", t.text)}
    with contextlib.suppress(*READ_ERRORS):
        # fieldname= given: without it Whoosh 2.7 keeps only the first leaf's field (a loop variable
        # shadows the argument)
        for _, text in parsed.existing_terms(searcher.reader(), phrases=True, expand=True, fieldname="content"):
            words.add(text.decode("utf-8") if isinstance(text, bytes) else str(text))
            if len(words) >= HIGHLIGHT_TERMS:
                break
    return words


Fragment = tuple[int, int, int, list[tuple[int, int, str]]]
"""(distinct words, start, end, matches) of a stretch of text a snippet may show."""


def _fragments(text: str, matches: list[tuple[int, int, str]]) -> list[Fragment]:
    """The matches grouped into stretches of at most :data:`SNIPPET_CHARS`, widened to whole words around them."""
    fragments: list[Fragment] = []
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
    return fragments


def hit(stored: dict[str, Any], score: float | None, snippets: Snippets | None) -> Hit:
    """A hit from its document's stored fields, its snippet highlighted by ``snippets`` (if any)."""
    excerpt = str(stored.get("content", ""))[:HIGHLIGHT_CHARS]
    snippet = snippets(excerpt) if snippets is not None else html.escape(excerpt[:SNIPPET_CHARS], quote=False)
    return Hit(bucket=stored["bucket"], key=stored["key"], score=round(float(score or 0.0), 4), snippet=snippet,
               type=stored.get("type", ""), title=stored.get("title", ""), size=int(stored.get("size") or 0),
               etag=stored.get("etag", ""))


__all__ = ["HIGHLIGHT_CHARS", "SNIPPET_CHARS", "Snippets", "hit"]
