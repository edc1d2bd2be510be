"""A query's text as a Whoosh query: parsed once, made directly when it is only words, and pruned."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any

from whoosh import qparser, query
from whoosh.fields import Schema

from fileproc.search.whoosh.schema import SEARCHED_FIELDS

PARSED_KEPT = 1024
"""Parsed queries kept (by their text)."""

PRESENT_KEPT = 100_000
"""Words remembered as present or absent per searcher (see :func:`prune`)."""

_WORD = re.compile(r"\w+")
_OPERATORS = frozenset({"AND", "OR", "NOT", "ANDNOT", "ANDMAYBE", "TO"})


class Parser:
    """Query texts as Whoosh queries, the last :data:`PARSED_KEPT` kept (the parser is slow; queries repeat)."""

    def __init__(self) -> None:
        self._parser: Any = None
        self._parsed: dict[str, Any] = {}

    def parse(self, schema: Schema, text: str) -> Any:
        parsed = self._parsed.get(text)
        if parsed is None:
            parsed = words_query(schema, text)
            if parsed is None:
                if self._parser is None:
                    self._parser = qparser.MultifieldParser(list(SEARCHED_FIELDS), schema)
                parsed = self._parser.parse(text) if text.strip() else query.Every()
            if len(self._parsed) >= PARSED_KEPT:
                self._parsed.pop(next(iter(self._parsed)))
            self._parsed[text] = parsed
        return parsed


def words_query(schema: Schema, text: str) -> Any:
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


def plain_terms(q: Any) -> list[query.Term] | None:
    """The Terms of a query made only of Terms, Ands and Ors (no boosts); None for anything else."""
    if type(q) is query.Term:
        return [q]
    if type(q) in (query.And, query.Or) and q.boost == 1.0:
        found: list[query.Term] = []
        for sub in q.subqueries:
            leaves = plain_terms(sub)
            if leaves is None:
                return None
            found += leaves
        return found
    return None


def prune(q: Any, present: Callable[[str, Any], bool]) -> Any:
    """``q`` without the alternatives of an OR that are words no document has in that field.

    A word is looked for in title, name and content, and it is rarely in
    all three: each alternative costs a matcher per segment, so a query of
    plain words is built three times over for nothing. Dropping an absent
    term changes no score and no match (only ANDs and ORs are entered).
    """
    if isinstance(q, query.Or | query.And):
        subs = [prune(sub, present) for sub in q.subqueries]
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


class Present:
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


__all__ = ["Parser", "Present", "plain_terms", "prune", "words_query"]
