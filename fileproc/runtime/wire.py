"""What passes between a worker and its runners: framed messages on their socket, and a runner's output file.

A message is a length (8 bytes, network order), then that many bytes (a
pickle, in practice). The worker waits for a reply with a deadline and a
cancel event (:func:`receive`); a runner reads its next message blocking
(:func:`read_message`).

A spawned runner's stdout and stderr are a memory file the worker holds
too (:func:`output_file`): whatever either side reads of it goes through
:func:`read_output`, at most :data:`OUTPUT_LIMIT` bytes.
"""

from __future__ import annotations

import os
import select
import struct
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import socket
    import threading

_HEADER = struct.Struct("!Q")
_TICK = 0.25  # how often a waiting worker looks at its cancel event

OUTPUT_LIMIT = 256 * 1024
"""Bytes of a runner's output file that are read (as much as a deployed function's log keeps)."""


class Signal:
    """What :func:`receive` returns instead of a reply: :data:`TIMED_OUT` or :data:`CANCELLED`."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


TIMED_OUT = Signal("timed out")
CANCELLED = Signal("cancelled")


def send(sock: socket.socket, data: bytes) -> None:
    """Send one message."""
    sock.sendall(_HEADER.pack(len(data)) + data)


def read_message(sock: socket.socket) -> bytes | None:
    """The next message, blocking (None at EOF: the worker closed the socket)."""
    header = _read_exactly(sock, _HEADER.size)
    if header is None:
        return None
    return _read_exactly(sock, _HEADER.unpack(header)[0])


def _read_exactly(sock: socket.socket, size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def receive(sock: socket.socket, deadline: float, cancel: threading.Event | None) -> bytes | Signal | None:
    """The runner's reply; :data:`TIMED_OUT` past ``deadline`` (``time.monotonic``), :data:`CANCELLED` once
    ``cancel`` is set, or None if the runner died first."""
    buffer = bytearray()
    needed: int | None = None
    while needed is None or len(buffer) < needed:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return TIMED_OUT
        if cancel is not None and cancel.is_set():
            return CANCELLED
        ready, _, _ = select.select([sock], [], [], min(remaining, _TICK))
        if not ready:
            continue
        try:  # (never past this reply: the next one, of a step chained behind it, may follow at once)
            chunk = sock.recv(min(1 << 20, (needed or _HEADER.size) - len(buffer)))
        except ConnectionResetError:
            return None
        if not chunk:
            return None
        buffer += chunk
        if needed is None and len(buffer) >= _HEADER.size:
            needed = _HEADER.size + _HEADER.unpack_from(buffer)[0]
    return bytes(buffer[_HEADER.size:])


def output_file() -> int | None:
    """A new spawned runner's stdout and stderr: a memory file (None where there is none: /dev/null then)."""
    try:
        return os.memfd_create("fileproc-invocation-output", os.MFD_CLOEXEC)
    except (OSError, AttributeError):  # (not Linux)
        return None


def read_output(fd: int) -> tuple[str, int]:
    """What a runner's output file holds since it was last emptied (at most :data:`OUTPUT_LIMIT` bytes), and
    how many bytes more it holds. Read by the worker when a runner died, by the runner when a capture ends."""
    size = os.fstat(fd).st_size
    data = os.pread(fd, min(size, OUTPUT_LIMIT), 0)
    return data.decode(errors="replace"), max(0, size - OUTPUT_LIMIT)


def read_output_text(fd: int) -> str:
    """:func:`read_output` as text, saying how much was dropped."""
    text, past = read_output(fd)
    return text + (f"[fileproc: {past} more bytes of output dropped]\n" if past else "")


__all__ = ["CANCELLED", "OUTPUT_LIMIT", "TIMED_OUT", "Signal", "output_file", "read_message", "read_output",
           "read_output_text", "receive", "send"]
