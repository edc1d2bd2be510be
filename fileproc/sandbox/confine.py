"""A runner confined to its own folders (Landlock), and what a refusal means in plain words.

:func:`confine` applies :func:`.landlock.restrict_writes` with what a
runner needs: writes beneath its own folders and the storage's, reads of
Python and its packages (:func:`runtime_paths`) but of nothing hidden.
It remembers what it allowed, so that :func:`plain_reason` can say why an
``OSError`` a handler raised happened (a refused write, a link in the
storage, a file past the disk limit) in fileproc's words, not the errno's.
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

from fileproc.sandbox.landlock import restrict_writes  # imported with this module, not at a cold start

_writable: list[Path] = []  # where this runner may write, once confined (empty: not confined)
_shared: list[Path] = []  # of those, the storage's (no link made there)
_hidden: list[Path] = []  # what it may not read either


def runtime_paths() -> list[Path]:
    """What a runner reads to run at all: Python, its installed packages, fileproc's own package."""
    package = Path(__file__).parent.parent  # fileproc's folder (this is fileproc/sandbox/confine.py)
    packages = [Path(p) for p in sys.path if p and Path(p).name in ("site-packages", "dist-packages")]
    return [Path(sys.prefix), Path(sys.base_prefix), *packages, package]


def confine(folders: list[Path], shared: list[Path], hidden: list[Path], readable: list[Path], *,
            shm: bool) -> None:
    """Writes only beneath ``folders`` and ``shared`` (and /dev/null, its /proc entry) from now on.

    Links, devices, fifos and sockets can be made only beneath ``folders``
    (its own), never beneath ``shared`` (the storage's). /dev/shm is
    writable only when it is the runner's own (``shm``). Reads too are
    refused beneath ``hidden`` (but beneath the folders and ``readable``,
    of which none may lead to a hidden path: such an entry is dropped), and
    in other processes' /proc entries. Where the kernel has no Landlock,
    nothing is restricted (and :func:`plain_reason` explains no refusal).
    """
    global _writable, _shared, _hidden
    sys.dont_write_bytecode = True  # its package is read-only to it: no __pycache__ beside the code
    allowed = [*folders, *([Path("/dev/shm")] if shm else []), Path(f"/proc/{os.getpid()}")]
    # Never hide "/" (a home folder may hold Python itself: ``readable`` keeps that readable).
    hidden = [path.resolve() for path in hidden if path.resolve() != Path("/")]
    # A rule opens everything beneath its path: one on the way to a hidden path would open it.
    readable = [path for path in readable
                if not any(secret.is_relative_to(path.resolve()) for secret in hidden)]
    if restrict_writes(allowed, [Path("/dev/null"), Path("/dev/zero"), Path("/dev/full")], storage=shared,
                       hidden=hidden, readable=readable):
        _writable = [folder.resolve() for folder in [*allowed, *shared]]  # as Landlock sees them (through links)
        _shared = [folder.resolve() for folder in shared]
        _hidden = hidden


def plain_reason(exc: BaseException, disk_mb: int) -> str | None:
    """What a handler's exception means in plain words, where fileproc knows better than its message.

    A refusal of :func:`confine`'s (once confined), or a file past the disk
    limit (``disk_mb``: RLIMIT_FSIZE, EFBIG) or a full private /tmp
    (ENOSPC); None for anything else.
    """
    if isinstance(exc, OSError) and _writable and exc.errno == errno.EACCES and exc.filename2:
        link = Path(os.fsdecode(exc.filename2)).absolute()  # symlink(), link(), rename(): where it would land
        if any(link.parent.resolve().is_relative_to(folder) for folder in _shared):
            return (f"refused making {link}: a function makes only folders and files in the storage's folders, "
                    f"no links ({exc.strerror})")
    if isinstance(exc, OSError) and _writable and exc.filename:
        target = Path(os.fsdecode(exc.filename)).absolute()
        where = target.parent.resolve() / target.name  # what Landlock checked (a host folder links from /tmp)
        mine = any(where.is_relative_to(folder) for folder in _writable)
        if exc.errno == errno.EACCES and not mine and any(where.is_relative_to(path) for path in _hidden):
            return (f"refused reading or writing {target}: fileproc's own files (its state, settings and other "
                    f"functions) are out of a function's reach ({exc.strerror})")
        if exc.errno == errno.EACCES and not mine:
            return (f"refused writing {target}: a function writes only to its /tmp and the folders fileproc "
                    f"gives it ({exc.strerror})")
    if isinstance(exc, OSError) and exc.errno == errno.EFBIG:
        return f"wrote a file past its disk limit of {disk_mb} MB ({exc.strerror})"
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return f"ran out of disk space: past its disk limit of {disk_mb} MB, or the disk is full ({exc.strerror})"
    return None


__all__ = ["confine", "plain_reason", "runtime_paths"]
