"""Child processes that must not outlive the process that started them."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux; elsewhere a no-op)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)


def _owned_child() -> None:
    # Its own session, so a terminal's Ctrl-C reaches only the parent (which then stops
    # the child once, cleanly); SIGTERM if the parent dies, so nothing is left behind.
    os.setsid()
    die_with_parent(signal.SIGTERM)


def spawn(argv: list[str], stdin: bytes | None = None) -> subprocess.Popen[bytes]:
    """Start a child (the embedded broker, a worker) that stops when its parent goes.

    ``stdin``: what it reads on its standard input (a secret kept off its command line), then EOF.
    """
    if stdin is None:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, preexec_fn=_owned_child)
    child = subprocess.Popen(argv, stdin=subprocess.PIPE, preexec_fn=_owned_child)
    assert child.stdin is not None
    with child.stdin:
        child.stdin.write(stdin)
    return child
