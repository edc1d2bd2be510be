"""What a deployed function and its versions may be called: ``NAME``, ``NAME:VERSION`` or ``NAME:ALIAS``."""

from __future__ import annotations

import re

from fileproc.state.deployments import LIVE

NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
"""What a deployed function may be called (Lambda's rule: letters, digits, hyphens, underscores)."""

QUALIFIER = re.compile(r"^(?:\d+|[A-Za-z][A-Za-z0-9_-]{0,63})$")


def split(reference: str) -> tuple[str, str]:
    """``NAME[:QUALIFIER]`` as (name, qualifier); the qualifier defaults to ``live``."""
    name, _, qualifier = reference.partition(":")
    return name, qualifier or LIVE


def looks_deployed(reference: str) -> bool:
    """Whether ``reference`` can name a deployed function (a plain handler's ``module:function`` can too)."""
    name, qualifier = split(reference)
    return bool(NAME.match(name) and QUALIFIER.match(qualifier))


__all__ = ["NAME", "QUALIFIER", "looks_deployed", "split"]
