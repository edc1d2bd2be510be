"""An invocation's output, captured: what the handler prints or logs, and what its child processes write.

In a deployed function's runner (:mod:`.bootstrap`), each invocation's
``print``, logging and fds 1 and 2 go, between Lambda's START and END
lines (:func:`captured`), to the runner's output file: a memory file its
worker holds too (:func:`output_to_stdout`), so that what was printed
before a runner died mid-invocation is kept (:func:`.logformat.unfinished_log`).
What its module prints while it is imported is captured the same way
(:func:`captured_init`) and goes in the first invocation's log. At most
:data:`LOG_LIMIT` bytes of one invocation's output are kept.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Iterator

from fileproc.runtime.wire import OUTPUT_LIMIT, read_output
from fileproc.serverless.logformat import end_line, set_request_id, start_line

LOG_LIMIT = OUTPUT_LIMIT
"""Bytes of one invocation's output kept on its attempt (the rest is dropped, and says so)."""

_CUT = f"[fileproc: output past {LOG_LIMIT // 1024} KB dropped]\n"  # where a capture stopped keeping output


class Captured(io.TextIOBase):
    """What one invocation (or the module's import) printed or logged: at most :data:`LOG_LIMIT` bytes.

    Line-buffered, and written through to the runner's output file at each
    newline (or flush): a runner killed mid-invocation (at its timeout, by
    the OOM killer, a crash) has left there every line it printed, for the
    worker to read (:func:`.logformat.unfinished_log`). (One write per line, not per
    piece ``print`` writes: a system call costs a few microseconds.) Without
    an output file (no memfd) it is kept here. Its text is there once
    :meth:`finish` has read it back.
    """

    def __init__(self, fd: int | None) -> None:
        self._fd = fd
        self._pending: list[str] = []  # the line being written
        self._parts: list[str] = []  # without an output file
        self._size = 0
        self._dropped = 0
        self._finished: str | None = None

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if self._finished is None:  # (else a thread the handler left printing: not this invocation's any more)
            self._pending.append(text)
            if "\n" in text or len(self._pending) > 64:
                self.flush()
        return len(text)

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        if pending:
            self._keep("".join(pending))

    def _keep(self, text: str) -> None:
        data = text.encode(errors="backslashreplace")
        if self._size + len(data) > LOG_LIMIT - len(_CUT):
            if not self._dropped:  # where it was cut, in case the runner dies before it says how much (finish)
                self._put(_CUT, _CUT.encode())
            self._dropped += len(data)
        else:
            self._put(text, data)

    def _put(self, text: str, data: bytes) -> None:
        if self._fd is None:
            self._parts.append(text)
        else:
            try:
                os.write(self._fd, data)
            except OSError:  # (its disk limit, RLIMIT_FSIZE, counts the memory file too)
                self._dropped += len(data)
                return
        self._size += len(data)

    def finish(self, last: str = "") -> None:
        """The capture is over: its text is read back (and the output file emptied), then ``last`` added."""
        self.flush()
        if self._fd is None:
            kept, past = "".join(self._parts), 0
        else:
            kept, past = _take_output(self._fd)
        if self._dropped:
            kept = kept.replace(_CUT, "", 1)  # (how much is said below)
        if kept and not kept.endswith("\n") and last:  # (a line printed without its newline)
            kept += "\n"
        dropped = self._dropped + past
        self._finished = kept + (f"[fileproc: {dropped} more bytes of output dropped]\n" if dropped else "") + last

    @property
    def text(self) -> str:
        return self._finished or ""


@contextlib.contextmanager
def captured(request_id: str, version: str, before: str = "") -> Iterator[Captured]:
    """Capture ``print`` and logging of one invocation, between Lambda's START and END lines.

    ``before`` (what the module printed while it was imported) comes first.
    Everything goes to the runner's output file as it is written (Python's
    line by line), in order: what the handler writes in Python and, through
    fds 1 and 2 pointed there meanwhile, what its child processes or C code
    write. When the invocation ends it is read back (END added). If it
    raises past here, or the runner dies in it, it stays in the file, for
    the worker to read.
    """
    out = Captured(_fresh_output())
    if before and not before.endswith("\n"):
        before += "\n"
    out.write(before + start_line(request_id, version))
    saved = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = out
    set_request_id(request_id)
    descriptors = _redirect_descriptors()
    try:
        yield out
    finally:
        out.flush()
        sys.stdout, sys.stderr = saved
        set_request_id("")
        _restore_descriptors(descriptors)
    out.finish(end_line(request_id))


@contextlib.contextmanager
def captured_init() -> Iterator[Captured]:
    """Capture what the handler's module prints or logs while it is imported (Lambda's init phase)."""
    out = Captured(_fresh_output())
    saved = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = out
    descriptors = _redirect_descriptors()
    try:
        yield out
    finally:
        sys.stdout, sys.stderr = saved
        _restore_descriptors(descriptors)
        out.finish()  # (an import that failed too: its output goes with the error on each invocation)


_output_file: int | None = None  # where captures write (fd 1 and 2 point there meanwhile), one per runner


def output_to_stdout() -> None:
    """In a spawned runner: captures write to its stdout, a memory file its worker holds too.

    The worker (:mod:`fileproc.runtime.pool`) reads it if the runner dies
    mid-invocation, so what was printed before is kept. It is used through
    a descriptor of its own: a handler that points fd 1 elsewhere changes
    nothing here. Where stdout is not a file (the worker could make no
    memory file), the runner makes its own.
    """
    global _output_file
    import stat

    if stat.S_ISREG(os.fstat(1).st_mode):
        _output_file = os.dup(1)


def _fresh_output() -> int | None:
    """The output file, emptied for a new capture (None without memfd: Python-level output only)."""
    global _output_file
    try:
        if _output_file is None:
            _output_file = os.memfd_create("fileproc-invocation-output")
        os.ftruncate(_output_file, 0)
        os.lseek(_output_file, 0, os.SEEK_SET)
    except (OSError, AttributeError):
        return None
    return _output_file


def _take_output(fd: int) -> tuple[str, int]:
    """What the output file holds (at most :data:`LOG_LIMIT` bytes) and how many bytes more; then it is emptied."""
    found = read_output(fd)
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)  # the next capture writes from the start again
    return found


def _redirect_descriptors() -> tuple[int, int] | None:
    """Point fds 1 and 2 at the output file; what they were, to restore."""
    if _output_file is None:
        return None
    try:
        saved = os.dup(1), os.dup(2)
        os.dup2(_output_file, 1)
        os.dup2(_output_file, 2)
    except OSError:
        return None
    return saved


def _restore_descriptors(saved: tuple[int, int] | None) -> None:
    if saved is None:
        return
    os.dup2(saved[0], 1)
    os.dup2(saved[1], 2)
    os.close(saved[0])
    os.close(saved[1])


__all__ = ["LOG_LIMIT", "Captured", "captured", "captured_init", "output_to_stdout"]
