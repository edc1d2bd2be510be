"""JSON from a body someone else sent: parsed whole, or refused with the reason (never a RecursionError).

Used wherever fileproc parses what arrives from outside: request bodies
(:mod:`fileproc.web.bounds`), bucket notifications from any source
(:func:`fileproc.intake.notifications.parse_body`).
"""

from __future__ import annotations

import json
from typing import Any

from fileproc.errors import FileprocError

MAX_JSON_DEPTH = 100
"""Deepest nesting of arrays and objects a JSON body may have (an S3 notification has 5)."""


class BadJSON(FileprocError):
    """A request body that is not JSON, or nests deeper than :data:`MAX_JSON_DEPTH` (400)."""


def loads(body: bytes | str) -> Any:
    """``body`` parsed as JSON, or BadJSON with the reason.

    Example::

        >>> loads(b"[" * 101 + b"]" * 101)
        Traceback (most recent call last):
        BadJSON: JSON nested deeper than 100 levels
    """
    too_deep = BadJSON(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        data = json.loads(body)
    except RecursionError:  # far deeper than ours: the parser's own limit
        raise too_deep from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadJSON(f"body is not JSON: {exc}") from exc
    # Each level opens a bracket: a body with few (every small one) cannot be too deep.
    brackets = body.count(b"[") + body.count(b"{") if isinstance(body, bytes) else body.count("[") + body.count("{")
    if brackets > MAX_JSON_DEPTH and _deeper_than(data, MAX_JSON_DEPTH):
        raise too_deep
    return data


def _deeper_than(data: Any, limit: int) -> bool:
    # Level by level, not recursively: no depth can exhaust the stack here.
    level = [data] if isinstance(data, dict | list) else []
    for _ in range(limit):
        if not level:
            return False
        level = [child for node in level for child in (node.values() if isinstance(node, dict) else node)
                 if isinstance(child, dict | list)]
    return bool(level)


__all__ = ["MAX_JSON_DEPTH", "BadJSON", "loads"]
