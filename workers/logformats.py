"""Log line parsers, bounded-memory aggregates and the filter language of the ``logs`` function.

Everything here holds a fixed amount of memory whatever the size of the log:
top-N counters keep at most ``2 * capacity`` keys (Misra-Gries, with its
error bound: see :class:`TopCounter`),
response times go into a log-scale histogram (about 2 % relative error on
any percentile, mergeable across files).
"""

from __future__ import annotations

import heapq
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

Record = dict[str, Any]

_HTTP = re.compile(
    r'^(?P<client>\S+) \S+ (?P<user>\S+) \[(?P<time>[^\]]+)\] "(?P<method>[A-Z]+) (?P<path>\S+)(?: [^"]*)?" '
    r'(?P<status>\d{3}) (?P<bytes>\d+|-)(?P<rest>.*)$')
_REFERER_AGENT = re.compile(r'^ "(?P<referer>[^"]*)" "(?P<agent>[^"]*)"(?: (?P<rt>\d+(?:\.\d+)?))?')
_SYSLOG_3164 = re.compile(
    r"^(?:<(?P<pri>\d{1,3})>)?(?P<time>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d) (?P<host>\S+) "
    r"(?P<app>[^:\[\s]+)(?:\[(?P<pid>\d+)\])?: ?(?P<message>.*)$")
_SYSLOG_5424 = re.compile(
    r"^<(?P<pri>\d{1,3})>1 (?P<time>\S+) (?P<host>\S+) (?P<app>\S+) (?P<pid>\S+) (?P<msgid>\S+) "
    r"(?P<sd>-|(?:\[(?:[^\]\\]|\\.)*\])+)(?: (?P<message>.*))?$")

FORMATS = ("combined", "common", "json", "syslog3164", "syslog5424")


def _http_time(text: str) -> datetime | None:
    try:
        return datetime.strptime(text, "%d/%b/%Y:%H:%M:%S %z")
    except ValueError:
        return None


def parse_http(line: str, combined: bool) -> Record | None:
    m = _HTTP.match(line)
    if m is None:
        return None
    rest = m["rest"]
    record: Record = {"time": _http_time(m["time"]), "client": m["client"], "method": m["method"],
                      "path": m["path"], "status": int(m["status"]),
                      "bytes": 0 if m["bytes"] == "-" else int(m["bytes"])}
    if combined:
        extra = _REFERER_AGENT.match(rest)
        if extra is None:
            return None
        record["referer"], record["agent"] = extra["referer"], extra["agent"]
        if extra["rt"]:
            record["response_ms"] = float(extra["rt"]) * 1000  # nginx's $request_time, in seconds
    elif rest.strip():
        return None
    return record


# The same formats as parse_http, for whole chunks of text at once (re.findall runs in C): one row
# per line; a line that does not parse leaves the fields empty and is whole in the last group.
_HTTP_ROW = (r'(?P<client>\S+) \S+ \S+ \[(?P<time>[^\]\n]+)\] "(?P<method>[A-Z]+) (?=\S)(?P<path>[^\s?]*)\S*'
             r'(?: [^"\n]*)?" (?P<status>\d{3}) (?:(?P<bytes>\d+)|-)')
HTTP_CHUNK = {
    "combined": re.compile(rf'^(?:{_HTTP_ROW} "[^"\n]*" "[^"\n]*"(?: (?P<rt>\d+(?:\.\d+)?))?[^\n]*|(?P<bad>[^\n]*))$',
                           re.MULTILINE),
    "common": re.compile(rf"^(?:{_HTTP_ROW}()[ \t\r\f\v]*|(?P<bad>[^\n]*))$", re.MULTILINE),
}
"""Columns of a row: client, time, method, path (no query string), status, bytes ('' for -), response
time in seconds ('' if none), bad line ('' if it parsed). The method is empty exactly when the line did not parse."""

_MONTHS = {m: i for i, m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov",
                                       "Dec"), 1)}


def http_time(text: str) -> datetime | None:
    """``12/Mar/2026:10:00:07 +0000`` (what ``%d/%b/%Y:%H:%M:%S %z`` reads), five times faster than strptime."""
    try:
        if len(text) != 26 or text[2] != "/" or text[6] != "/" or text[11] != ":" or text[20] != " ":
            raise ValueError(text)
        sign = {"+": 1, "-": -1}[text[21]]
        offset = sign * (int(text[22:24]) * 60 + int(text[24:26]))
        zone = UTC if offset == 0 else timezone(timedelta(minutes=offset))
        return datetime(int(text[7:11]), _MONTHS[text[3:6]], int(text[:2]), int(text[12:14]), int(text[15:17]),
                        int(text[18:20]), tzinfo=zone)
    except (ValueError, KeyError):
        return _http_time(text)  # anything unusual: exactly what strptime says


_JSON_KEYS = {
    "status": ("status", "status_code", "statusCode"), "method": ("method", "request_method", "verb"),
    "path": ("path", "uri", "url", "request_uri"), "bytes": ("bytes", "body_bytes_sent", "size", "bytes_sent"),
    "client": ("client", "remote_addr", "ip", "client_ip"), "time": ("time", "timestamp", "@timestamp", "ts"),
    "level": ("level", "severity", "lvl"), "message": ("message", "msg"),
}
_JSON_MS = ("response_ms", "duration_ms", "latency_ms", "elapsed_ms")
_JSON_SECONDS = ("request_time", "response_time", "duration")


def parse_json(line: str) -> Record | None:
    try:
        raw = json.loads(line)
    except ValueError:
        return None
    if not isinstance(raw, dict):
        return None
    record: Record = dict(raw)
    for name, keys in _JSON_KEYS.items():
        for key in keys:
            if key in raw:
                record[name] = raw[key]
                break
    for key in _JSON_MS:
        if isinstance(raw.get(key), int | float):
            record["response_ms"] = float(raw[key])
            break
    else:
        for key in _JSON_SECONDS:
            if isinstance(raw.get(key), int | float):
                record["response_ms"] = float(raw[key]) * 1000
                break
    if isinstance(record.get("time"), str):
        try:
            record["time"] = datetime.fromisoformat(record["time"].replace("Z", "+00:00"))
        except ValueError:
            record["time"] = None
    elif isinstance(record.get("time"), int | float):
        record["time"] = datetime.fromtimestamp(record["time"], UTC)
    for name in ("status", "bytes"):
        if name in record:
            try:
                record[name] = int(record[name])
            except (TypeError, ValueError):
                return None
    return record


_SEVERITIES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")


def _syslog_fields(m: re.Match[str], time: datetime | None) -> Record:
    record: Record = {"time": time, "host": m["host"], "app": m["app"], "message": m["message"] or ""}
    if m["pri"] is not None:
        pri = int(m["pri"])
        record["facility"], record["severity"] = pri // 8, pri % 8
        record["level"] = _SEVERITIES[pri % 8]
    return record


def parse_syslog3164(line: str, year: int) -> Record | None:
    m = _SYSLOG_3164.match(line)
    if m is None:
        return None
    try:
        time = datetime.strptime(f"{year} {m['time']}", "%Y %b %d %H:%M:%S")
    except ValueError:
        return None
    return _syslog_fields(m, time)


def parse_syslog5424(line: str) -> Record | None:
    m = _SYSLOG_5424.match(line)
    if m is None:
        return None
    try:
        time = None if m["time"] == "-" else datetime.fromisoformat(m["time"].replace("Z", "+00:00"))
    except ValueError:
        return None
    return _syslog_fields(m, time)


def parser_for(name: str, year: int) -> Callable[[str], Record | None]:
    if name == "combined":
        return lambda line: parse_http(line, True)
    if name == "common":
        return lambda line: parse_http(line, False)
    if name == "json":
        return parse_json
    if name == "syslog3164":
        return lambda line: parse_syslog3164(line, year)
    if name == "syslog5424":
        return parse_syslog5424
    raise ValueError(f"unknown log format {name!r} (known: {', '.join(FORMATS)})")


def detect(lines: list[str], year: int) -> str | None:
    """The format that parses most of ``lines`` (None if none parses any)."""
    best, best_count = None, 0
    for name in FORMATS:
        parse = parser_for(name, year)
        count = sum(1 for line in lines if parse(line) is not None)
        if count > best_count:
            best, best_count = name, count
    return best


# --- bounded aggregates ------------------------------------------------------------------


class TopCounter:
    """Counts of the most frequent keys in bounded memory (Misra-Gries, reduced in batches).

    Exact while at most ``2 * capacity`` distinct keys were seen. Past that,
    a *reduction* subtracts the (capacity+1)-th largest count from every
    count and forgets the keys left at zero or below, so at most ``capacity``
    keys stay. :attr:`error` is the sum of what reductions subtracted; for
    every key, ``true count - error <= counts[key] <= true count``, ``error``
    is at most ``total / (capacity + 1)``, and every key seen more than that
    often is kept. A reduction costs O(keys) and happens at most once per
    ``capacity`` new keys, so an ``add`` costs O(1) amortised, and
    :meth:`update` counts a whole column of keys in C (``Counter.update``).
    """

    def __init__(self, capacity: int = 1000) -> None:
        self.capacity = capacity
        self.counts: Counter[str] = Counter()
        self.total = 0
        self.error = 0

    def add(self, key: str, by: int = 1) -> None:
        self.total += by
        self.counts[key] += by
        if len(self.counts) > 2 * self.capacity:
            self._reduce()

    def update(self, keys: Sequence[str], *, less: str = "", less_by: int = 0) -> None:
        """Count every key of ``keys``, less ``less_by`` of the ``less`` among them (placeholders, not keys)."""
        counts = self.counts
        counts.update(keys)
        self.total += len(keys) - less_by
        if less_by:
            counts[less] -= less_by
            if counts[less] <= 0:
                del counts[less]
        if len(counts) > 2 * self.capacity:
            self._reduce()

    def _reduce(self) -> None:
        cut = heapq.nlargest(self.capacity + 1, self.counts.values())[-1]
        self.counts = Counter({key: count - cut for key, count in self.counts.items() if count > cut})
        self.error += cut

    @property
    def exact(self) -> bool:
        return self.error == 0

    def top(self, n: int) -> dict[str, int]:
        return dict(heapq.nsmallest(n, self.counts.items(), key=lambda kv: (-kv[1], kv[0])))


class Histogram:
    """Log-scale buckets of positive values: percentiles within ~2 %, mergeable (a dict of counts)."""

    GROWTH = 1.04

    def __init__(self, buckets: dict[str, int] | None = None) -> None:
        self.buckets: dict[int, int] = {int(k): v for k, v in (buckets or {}).items()}
        self.count = sum(self.buckets.values())

    def add(self, value: float, times: int = 1) -> None:
        index = -10_000 if value <= 0 else math.floor(math.log(value, self.GROWTH))
        self.buckets[index] = self.buckets.get(index, 0) + times
        self.count += times

    def merge(self, other: Histogram) -> None:
        for index, count in other.buckets.items():
            self.buckets[index] = self.buckets.get(index, 0) + count
        self.count += other.count

    def percentile(self, fraction: float) -> float | None:
        if not self.count:
            return None
        rank, seen = fraction * self.count, 0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen >= rank:
                return 0.0 if index == -10_000 else round(self.GROWTH ** (index + 0.5), 2)
        return None

    def to_json(self) -> dict[str, int]:
        return {str(k): v for k, v in self.buckets.items()}


# --- the filter language -----------------------------------------------------------------

_TOKEN = re.compile(r'\s*(?:(?P<num>-?\d+(?:\.\d+)?)|(?P<str>"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\')|'
                    r"(?P<op>==|!=|>=|<=|>|<|~|\(|\))|(?P<word>[A-Za-z_][\w.]*))")


class FilterError(ValueError):
    pass


def compile_filter(text: str) -> Callable[[Record], bool]:
    """A predicate from a small expression language, parsed here (never ``eval``)::

        status >= 500
        method == "POST" and path ~ "^/api/"     (~ is a regular expression search)
        not (client == "10.0.0.1" or level == "debug")
        severity <= 3

    Fields are a record's keys (status, method, path, client, bytes,
    response_ms, level, severity, host, app, message, any JSON key); a record
    without the field does not match a comparison on it.
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
            value = raw[1:-1].encode().decode("unicode_escape")
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


__all__ = ["FORMATS", "HTTP_CHUNK", "FilterError", "Histogram", "TopCounter", "compile_filter", "detect", "http_time",
           "parser_for"]
