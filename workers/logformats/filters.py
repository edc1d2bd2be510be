"""The filter language of the ``logs`` step: a small expression over a record's fields, parsed here (never ``eval``)."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from typing import Any

from workers.logformats.parsers import Record

_TOKEN = re.compile(r'\s*(?:(?P<num>-?\d+(?:\.\d+)?)|(?P<str>"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\')|'
                    r"(?P<op>==|!=|>=|<=|>|<|~|\(|\))|(?P<word>[A-Za-z_][\w.]*))")


class FilterError(ValueError):
    pass


_ESCAPE = re.compile(r"\\(x[0-9A-Fa-f]{2}|u[0-9A-Fa-f]{4}|U[0-9A-Fa-f]{8}|N\{[^}]*\}|[0-7]{1,3}|.)", re.DOTALL)
_ESCAPED = {"\\": "\\", "'": "'", '"': '"', "a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t",
            "v": "\v"}


def unescape(text: str) -> str:
    r"""A string literal's text with its escapes read as Python reads them (``\"``, ``\\``, ``\n``,
    ``\xe9``, ``\u00e9``, ``\N{...}``...), every other character as it is, non-ASCII ones included.

    An unknown escape stays whole, as in Python, so a regular expression's ``\d`` is still ``\d``.
    """
    return _ESCAPE.sub(_escaped, text)


def _escaped(match: re.Match[str]) -> str:
    found = match[1]
    simple = _ESCAPED.get(found)
    if simple is not None:
        return simple
    try:
        if found[0] in "xuU":
            return chr(int(found[1:], 16))  # ValueError: \x without its two digits (Python refuses it too)
        if found[0] == "N":
            return unicodedata.lookup(found[2:-1])  # KeyError: no such name
        if found[0] in "01234567":
            return chr(int(found, 8))
    except (ValueError, KeyError) as exc:
        raise FilterError(f"filter: cannot read the escape \\{found}") from exc
    return "\\" + found


def compile_filter(text: str) -> Callable[[Record], bool]:
    """A predicate from a small expression language, parsed here (never ``eval``)::

        status >= 500
        method == "POST" and path ~ "^/api/"     (~ is a regular expression search)
        not (client == "10.0.0.1" or level == "debug")
        severity <= 3

    Fields are a record's keys (status, method, path, client, bytes,
    response_ms, level, severity, host, app, message, any JSON key); a record
    without the field does not match a comparison on it. A value is a
    number, a word, or a string in double or single quotes, any characters,
    with Python's escapes (:func:`unescape`): ``path == "/caf\\u00e9"`` is
    ``path == "/café"``.
    """
    tokens: list[tuple[str, str]] = []
    position = 0
    text = text.strip()
    while position < len(text):
        m = _TOKEN.match(text, position)
        if m is None or m.end() == position:
            raise FilterError(f"filter: cannot read {text[position:position + 20]!r}")
        kind = m.lastgroup or ""
        tokens.append((kind, m[kind]))
        position = m.end()
    parser = _Parser(tokens)
    predicate = parser.expression()
    if parser.position != len(tokens):
        raise FilterError(f"filter: unexpected {tokens[parser.position][1]!r}")
    return predicate


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens, self.position = tokens, 0

    def _peek(self) -> tuple[str, str] | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def _take(self) -> tuple[str, str]:
        token = self._peek()
        if token is None:
            raise FilterError("filter: ends too early")
        self.position += 1
        return token

    def expression(self) -> Callable[[Record], bool]:
        left = self._conjunction()
        while self._peek() == ("word", "or"):
            self._take()
            right = self._conjunction()
            left = (lambda a, b: lambda r: a(r) or b(r))(left, right)
        return left

    def _conjunction(self) -> Callable[[Record], bool]:
        left = self._unary()
        while self._peek() == ("word", "and"):
            self._take()
            right = self._unary()
            left = (lambda a, b: lambda r: a(r) and b(r))(left, right)
        return left

    def _unary(self) -> Callable[[Record], bool]:
        if self._peek() == ("word", "not"):
            self._take()
            inner = self._unary()
            return lambda r: not inner(r)
        if self._peek() == ("op", "("):
            self._take()
            inner = self.expression()
            if self._take() != ("op", ")"):
                raise FilterError("filter: missing ')'")
            return inner
        return self._comparison()

    def _comparison(self) -> Callable[[Record], bool]:
        kind, field = self._take()
        if kind != "word":
            raise FilterError(f"filter: expected a field name, got {field!r}")
        kind, op = self._take()
        if kind != "op" or op in "()":
            raise FilterError(f"filter: expected an operator after {field!r}, got {op!r}")
        kind, raw = self._take()
        if kind == "num":
            value: Any = float(raw)
        elif kind == "str":
            value = unescape(raw[1:-1])
        elif kind == "word":
            value = raw
        else:
            raise FilterError(f"filter: expected a value after {op!r}, got {raw!r}")
        if op == "~":
            pattern = re.compile(str(value))
            return lambda r: field in r and r[field] is not None and pattern.search(str(r[field])) is not None
        compare = {"==": lambda a, b: a == b, "!=": lambda a, b: a != b, ">=": lambda a, b: a >= b,
                   "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, "<": lambda a, b: a < b}[op]
        numeric = isinstance(value, float)

        def check(record: Record) -> bool:
            have = record.get(field)
            if have is None:
                return False
            try:
                return bool(compare(float(have), value) if numeric else compare(str(have), value))
            except (TypeError, ValueError):
                return False

        return check


__all__ = ["FilterError", "compile_filter", "unescape"]
