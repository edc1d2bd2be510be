"""Lambda's event filtering: which records of a stream a mapping's function gets.

A mapping's ``filter`` is a list of Lambda's filter patterns (Lambda's
``FilterCriteria.Filters[].Pattern``, as JSON objects); a record goes to the
function if it matches ANY of them, and is skipped (and counted) otherwise.
No patterns: every record goes. The syntax is Lambda's (EventBridge's)::

    {"data": {"status": ["shipped", "delivered"],            # exact values, OR'ed
              "total": [{"numeric": [">", 0, "<=", 500]}],
              "customer": {"tier": [{"anything-but": ["free"]}]},
              "coupon": [{"exists": false}]}}

A pattern is an object whose leaves are lists of matchers; every field
given must match (AND), any matcher of a list may (OR); ``"$or": [{...},
{...}]`` at a level ORs whole sub-patterns. Matchers: a string, number,
true/false or null (equal, type and all: ``"5"`` is not ``5``);
``{"prefix": s}``, ``{"suffix": s}`` (either also as ``{"prefix":
{"equals-ignore-case": s}}``); ``{"equals-ignore-case": s}``;
``{"anything-but": [v, ...] | v | {"prefix"|"suffix"|"equals-ignore-case"|
"wildcard": s}}``; ``{"numeric": [">", 0, "<=", 5]}`` or ``["=", 5]`` (on
numbers only, never on strings); ``{"exists": true|false}``; ``{"cidr":
"10.0.0.0/24"}`` (an IP address in a network); ``{"wildcard": "*.png"}``
(``*`` any run of characters, ``\\*`` a star). A field holding an array
matches if any of its elements does. ``exists`` sees only leaves: a field
holding an object does not "exist" for ``{"exists": true}``, and an empty
array is as good as no field.

What a pattern's top level refers to is the record as Lambda filters it
(:func:`record_document`): for Kafka ``{"value": ..., "key": ...,
"partition": ..., ...}``, for Kinesis-shaped engines (Redis Streams, NATS,
the embedded broker) ``{"data": ..., "partitionKey": ...,
"sequenceNumber": ...}``, with ``value``/``data`` decoded from JSON. Data
that is not JSON is kept as its text: a pattern looking inside it (``{"data":
{"field": [...]}}``) then never matches, as Lambda drops such a record, while
one on the other fields still applies. (Lambda refuses a pattern that matches
``data`` itself as a value; fileproc accepts it, on the text:
``{"data": [{"prefix": "ERROR"}]}``.)

Patterns are compiled once into closures (:func:`compile_filters`), which
rejects a bad pattern with a :class:`ValueError` naming the filter and the
field, so loading the configuration reports it.

Example::

    >>> f = compile_filters([{"data": {"kind": ["click"], "ms": [{"numeric": ["<", 100]}]}}])
    >>> f.matches({"data": {"kind": "click", "ms": 42}})
    True
    >>> f.matches({"data": {"kind": "view", "ms": 42}})
    False
"""

from __future__ import annotations

import ipaddress
import json
import operator
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from fileproc.streams.sources import Record

Test = Callable[[Any], bool]
"""A compiled part of a pattern: takes a value of the document (or :data:`MISSING`)."""

MISSING: Any = object()
"""What a test is given for a field the document does not have."""

KINESIS_ENGINES = ("redis", "nats", "amqp", "embedded")
"""Engines whose records Lambda would show as Kinesis records (``data``, ``partitionKey``)."""

MATCHERS = ("prefix", "suffix", "equals-ignore-case", "anything-but", "numeric", "exists", "cidr", "wildcard")

_LOWER = {">": operator.gt, ">=": operator.ge}
_UPPER = {"<": operator.lt, "<=": operator.le}


class Filter:
    """A mapping's compiled filter patterns: :meth:`matches` says whether a record's document passes."""

    __slots__ = ("_tests",)

    def __init__(self, tests: Sequence[Test]) -> None:
        self._tests = tuple(tests)

    @property
    def matches_all(self) -> bool:
        """No patterns: every record passes (a poller need not even build documents)."""
        return not self._tests

    def matches(self, document: Mapping[str, Any]) -> bool:
        """Whether ``document`` (see :func:`record_document`) matches any pattern (or there is none)."""
        if not self._tests:
            return True
        for test in self._tests:  # noqa: SIM110 (a plain loop: this runs on every record)
            if test(document):
                return True
        return False

    def __repr__(self) -> str:
        return f"<Filter of {len(self._tests)} pattern(s)>"


def compile_filters(patterns: Sequence[Mapping[str, Any] | str]) -> Filter:
    """The :class:`Filter` of Lambda filter patterns (objects, or their JSON text as Lambda takes them).

    Raises ``ValueError`` naming the filter (1-based) and the field of a bad
    pattern: an unknown matcher, a leaf that is not a list, a malformed
    numeric range...
    """
    tests = []
    for number, pattern in enumerate(patterns, 1):
        where = f"filter {number}"
        if isinstance(pattern, str):
            try:
                pattern = json.loads(pattern)
            except ValueError as exc:
                raise ValueError(f"{where}: not JSON: {exc}") from None
        if not isinstance(pattern, Mapping):
            raise ValueError(f"{where}: a pattern is a JSON object of fields, got {_show(pattern)}")
        tests.append(_compile_object(pattern, where, ""))
    return Filter(tests)


# --- compiling ---------------------------------------------------------------------------------------------------


def _compile_object(pattern: Mapping[str, Any], where: str, path: str) -> Test:
    """A test of a value against an object pattern: every field (and every ``$or``) must match."""
    if not pattern:
        raise ValueError(f"{_at(where, path)}: an empty pattern tests nothing; give at least one field "
                         "(to take every record, give no filter)")
    fields: list[tuple[str, Test]] = []
    alternatives: list[tuple[Test, ...]] = []
    for key, sub in pattern.items():
        if not isinstance(key, str):
            raise ValueError(f"{_at(where, path)}: field names are strings, got {key!r}")
        if key == "$or":
            alternatives.append(_compile_or(sub, where, path))
            continue
        field_path = f"{path}.{key}" if path else key
        if isinstance(sub, Mapping):
            fields.append((key, _compile_object(sub, where, field_path)))
        elif isinstance(sub, list):
            fields.append((key, _compile_leaf(sub, where, field_path)))
        else:
            raise ValueError(f"{_at(where, field_path)}: expected a list of matchers (such as [{_show(sub)}]) "
                             f"or an object of fields, got {_show(sub)}")
    field_tests = tuple(fields)
    or_tests = tuple(alternatives)
    # Absent (or an empty array): every field is absent; only exists:false-like leaves can hold.
    on_missing = all(test(MISSING) for _, test in field_tests) and all(
        any(test(MISSING) for test in group) for group in or_tests)

    def on_object(value: Mapping[str, Any]) -> bool:
        for key, test in field_tests:
            if not test(value.get(key, MISSING)):
                return False
        for group in or_tests:
            for test in group:
                if test(value):
                    break
            else:
                return False
        return True

    def test(value: Any) -> bool:
        if type(value) is dict or isinstance(value, Mapping):
            return on_object(value)
        if value is MISSING:
            return on_missing
        if isinstance(value, list):
            found = False
            for item in _flatten(value):
                found = True
                if test(item):
                    return True
            return not found and on_missing
        # A scalar cannot hold fields: Lambda drops a record whose (non-JSON) data a pattern looks inside.
        return False

    return test


def _compile_or(alternatives: Any, where: str, path: str) -> tuple[Test, ...]:
    here = _at(where, f"{path}.$or" if path else "$or")
    if not isinstance(alternatives, list) or not alternatives:
        raise ValueError(f"{here}: $or takes a list of patterns, got {_show(alternatives)}")
    tests = []
    for alternative in alternatives:
        if not isinstance(alternative, Mapping):
            raise ValueError(f"{here}: each alternative of $or is an object of fields, got {_show(alternative)}")
        tests.append(_compile_object(alternative, where, path))
    return tuple(tests)


def _compile_leaf(matchers: list[Any], where: str, path: str) -> Test:
    """A test of a field's value against a list of matchers (any may match)."""
    here = _at(where, path)
    if not matchers:
        raise ValueError(f"{here}: an empty list of matchers matches nothing (for null, use [null])")
    strings: set[str] = set()
    numbers: set[float] = set()
    booleans: set[bool] = set()
    null = exists = absent = False
    checks: list[Test] = []  # the rest: each takes a present scalar
    for matcher in matchers:
        if isinstance(matcher, bool):
            booleans.add(matcher)
        elif isinstance(matcher, str):
            strings.add(matcher)
        elif isinstance(matcher, int | float):
            numbers.add(matcher)
        elif matcher is None:
            null = True
        elif isinstance(matcher, Mapping):
            if len(matcher) != 1:
                raise ValueError(f"{here}: a matcher object has exactly one operator, got {_show(matcher)}")
            [(name, arg)] = matcher.items()
            if name == "exists":
                if not isinstance(arg, bool):
                    raise ValueError(f"{here}: exists takes true or false, got {_show(arg)}")
                exists, absent = exists or arg, absent or not arg
            else:
                checks.append(_compile_operator(name, arg, here))
        else:
            raise ValueError(f"{here}: a matcher is a string, number, true/false, null or an object such as "
                             f'{{"prefix": "..."}}, got {_show(matcher)}')
    return _leaf_test(frozenset(strings), frozenset(numbers), frozenset(booleans), null, exists, absent,
                      tuple(checks))


def _leaf_test(strings: frozenset[str], numbers: frozenset[float], booleans: frozenset[bool], null: bool,
               exists: bool, absent: bool, checks: tuple[Test, ...]) -> Test:
    def on_scalar(value: Any) -> bool:
        if exists:
            return True
        kind = type(value)
        if kind is str:
            if value in strings:
                return True
        elif kind is bool:
            if value in booleans:
                return True
        elif kind is int or kind is float:
            if value in numbers:
                return True
        elif value is None and null:
            return True
        return any(check(value) for check in checks) if checks else False

    def test(value: Any) -> bool:
        if value is MISSING:
            return absent
        if isinstance(value, list):
            found = False
            for item in _flatten(value):
                if isinstance(item, Mapping):
                    continue  # not a leaf, as below
                if on_scalar(item):
                    return True
                found = True
            return absent and not found
        if isinstance(value, Mapping):
            return absent  # an object is not a leaf: it does not "exist"; other matchers see no value
        return on_scalar(value)

    return test


def _compile_operator(name: str, arg: Any, here: str) -> Test:
    """The check of one operator other than exists (``here``: where it is, for errors)."""
    label = f"{here}: {name}"
    if name == "prefix":
        return _affix(arg, label, str.startswith)
    if name == "suffix":
        return _affix(arg, label, str.endswith)
    if name == "equals-ignore-case":
        lowered = _text(arg, label).lower()
        return lambda value: isinstance(value, str) and value.lower() == lowered
    if name == "anything-but":
        return _anything_but(arg, label)
    if name == "numeric":
        return _numeric(arg, label)
    if name == "cidr":
        return _cidr(arg, label)
    if name == "wildcard":
        return _wildcard(_text(arg, label), label)
    raise ValueError(f"{here}: unknown matcher {name!r} (known: {', '.join(MATCHERS)})")


def _affix(arg: Any, here: str, test: Callable[[str, str], bool]) -> Test:
    if isinstance(arg, Mapping) and set(arg) == {"equals-ignore-case"}:
        lowered = _text(arg["equals-ignore-case"], f"{here}: equals-ignore-case").lower()
        return lambda value: isinstance(value, str) and test(value.lower(), lowered)
    text = _text(arg, here)
    return lambda value: isinstance(value, str) and test(value, text)


def _anything_but(arg: Any, here: str) -> Test:
    if isinstance(arg, Mapping):
        if len(arg) != 1 or next(iter(arg)) not in ("prefix", "suffix", "equals-ignore-case", "wildcard"):
            raise ValueError(f"{here}: takes values, or one of prefix, suffix, equals-ignore-case, wildcard; "
                             f"got {_show(arg)}")
        [(name, inner)] = arg.items()
        if name in ("equals-ignore-case", "wildcard") and isinstance(inner, list):
            if not inner:
                raise ValueError(f"{here}: {name} needs at least one string")
            positives = [_compile_operator(name, one, here) for one in inner]
        else:
            positives = [_compile_operator(name, inner, here)]
        return lambda value: not any(positive(value) for positive in positives)
    values = arg if isinstance(arg, list) else [arg]
    if not values:
        raise ValueError(f"{here}: needs at least one value")
    strings: set[str] = set()
    numbers: set[float] = set()
    for value in values:
        if isinstance(value, str):
            strings.add(value)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            numbers.add(value)
        else:
            raise ValueError(f"{here}: takes strings or numbers, got {_show(value)}")
    if strings and numbers:
        raise ValueError(f"{here}: takes strings or numbers, not both: {_show(values)}")
    frozen_strings, frozen_numbers = frozenset(strings), frozenset(numbers)

    def anything_but(value: Any) -> bool:
        kind = type(value)
        if kind is str:
            return value not in frozen_strings
        if kind is int or kind is float:
            return value not in frozen_numbers
        return True

    return anything_but


def _numeric(arg: Any, here: str) -> Test:
    usage = 'use ["=", 5], [">", 0], or a range such as [">", 0, "<=", 5]'
    if not isinstance(arg, list) or len(arg) not in (2, 4):
        raise ValueError(f"{here}: {usage}; got {_show(arg)}")
    pairs = list(zip(arg[::2], arg[1::2], strict=True))
    for op, bound in pairs:
        if op not in ("=", *_LOWER, *_UPPER):
            raise ValueError(f"{here}: unknown comparison {_show(op)} (use =, <, <=, >, >=)")
        if not isinstance(bound, int | float) or isinstance(bound, bool):
            raise ValueError(f"{here}: {op} compares with a number, got {_show(bound)}")
    if len(pairs) == 1:
        [(op, bound)] = pairs
        compare = operator.eq if op == "=" else {**_LOWER, **_UPPER}[op]
        return lambda value: (type(value) is int or type(value) is float) and compare(value, bound)
    lows = [pair for pair in pairs if pair[0] in _LOWER]
    highs = [pair for pair in pairs if pair[0] in _UPPER]
    if len(lows) != 1 or len(highs) != 1:
        raise ValueError(f"{here}: a range is one lower bound (> or >=) and one upper bound (< or <=), "
                         f"got {_show(arg)}")
    (low_op, low), (high_op, high) = lows[0], highs[0]
    above, below = _LOWER[low_op], _UPPER[high_op]
    return lambda value: (type(value) is int or type(value) is float) and above(value, low) and below(value, high)


def _cidr(arg: Any, here: str) -> Test:
    try:
        network = ipaddress.ip_network(_text(arg, here), strict=False)
    except ValueError as exc:
        raise ValueError(f"{here}: not a network such as 10.0.0.0/24: {exc}") from None

    def in_network(value: Any) -> bool:
        if not isinstance(value, str):
            return False
        try:
            return ipaddress.ip_address(value) in network
        except ValueError:
            return False

    return in_network


def _wildcard(text: str, here: str) -> Test:
    parts: list[str] = []
    literal: list[str] = []
    chars = iter(text)
    for char in chars:
        if char == "\\":
            escaped = next(chars, None)
            if escaped not in ("*", "\\"):
                raise ValueError(f"{here}: a backslash escapes only * or \\ in {text!r}")
            literal.append(escaped)
        elif char == "*":
            if not literal and parts and parts[-1] == ".*":
                raise ValueError(f"{here}: consecutive wildcards (**) in {text!r}")
            parts.extend([re.escape("".join(literal)), ".*"] if literal else [".*"])
            literal = []
        else:
            literal.append(char)
    parts.append(re.escape("".join(literal)))
    regex = re.compile("".join(parts), re.DOTALL)
    return lambda value: isinstance(value, str) and regex.fullmatch(value) is not None


def _text(arg: Any, here: str) -> str:
    if not isinstance(arg, str):
        raise ValueError(f"{here}: takes a string, got {_show(arg)}")
    return arg


def _flatten(values: list[Any]) -> Iterator[Any]:
    """The items of an array, arrays within it spread (iteratively: no depth can exhaust the stack)."""
    stack = [iter(values)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            yield item
        else:
            stack.pop()


def _at(where: str, path: str) -> str:
    return f"{where} at {path}" if path else where


def _show(value: Any) -> str:
    text = json.dumps(value, default=repr)
    return text if len(text) <= 60 else text[:57] + "..."


# --- documents ---------------------------------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # Python's json takes NaN and Infinity; Lambda's would not


_DECODE = json.JSONDecoder(parse_constant=_reject_constant).decode


def decode_data(data: bytes) -> Any:
    """A record's data as Lambda filters it: parsed JSON, else its text (invalid UTF-8 replaced)."""
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return data.decode("utf-8", "replace")
    try:
        return _DECODE(text)
    except (ValueError, RecursionError):
        return text


def record_document(record: Record, engine: str, *, topic: str | None = None) -> dict[str, Any]:
    """What a pattern's top level refers to for ``record`` of a stream of ``engine``, as on Lambda.

    Kafka (Lambda's Kafka record, ``value`` decoded)::

        {"topic": ..., "partition": 0, "offset": 15, "timestamp": 1545084650987, "timestampType": "CREATE_TIME",
         "key": "text" | None, "value": <JSON or text>, "headers": {"name": "text" | ["text", ...]}}

    Redis Streams, NATS, the embedded broker (Lambda's Kinesis record, ``data`` decoded)::

        {"partitionKey": ..., "sequenceNumber": ..., "approximateArrivalTimestamp": 1545084650.987,
         "data": <JSON or text>}

    ``topic`` is left out when not given; a Kinesis record put without a key has its partition as key.
    """
    if engine == "kafka":
        document: dict[str, Any] = {} if topic is None else {"topic": topic}
        document.update({
            "partition": _number(record.partition),
            "offset": _number(record.position),
            "timestamp": round(record.timestamp * 1000),
            "timestampType": record.timestamp_type,
            "key": None if record.key is None else record.key.decode("utf-8", "replace"),
            "value": decode_data(record.data),
            "headers": _headers(record.headers),
        })
        return document
    if engine in KINESIS_ENGINES:
        key = record.key if record.key is not None else record.partition.encode()
        return {
            "partitionKey": key.decode("utf-8", "replace"),
            "sequenceNumber": record.position,
            "approximateArrivalTimestamp": record.timestamp,
            "data": decode_data(record.data),
        }
    raise ValueError(f"unknown stream engine {engine!r} (kafka, {', '.join(KINESIS_ENGINES)})")


def _number(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def _headers(headers: tuple[tuple[str, bytes], ...]) -> dict[str, Any]:
    """Kafka's headers by name, as text; a name given several times holds the list of its values."""
    found: dict[str, Any] = {}
    for name, raw in headers:
        value = raw.decode("utf-8", "replace") if raw is not None else None
        if name not in found:
            found[name] = value
        elif isinstance(found[name], list):
            found[name].append(value)
        else:
            found[name] = [found[name], value]
    return found


__all__ = ["KINESIS_ENGINES", "MATCHERS", "MISSING", "Filter", "Test", "compile_filters", "decode_data",
           "record_document"]
