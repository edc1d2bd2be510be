"""Landlock (Linux 5.13+): a deployed function's runner may write only beneath the folders it is given.

Creating, writing, truncating, renaming and removing files is refused
(``PermissionError``) everywhere but the folders given: the runner's /tmp,
the step scratch folders and, on the local backend, the storage's own.
Reads stay open (a handler reads its libraries, certificates, its package)
but for the paths it is hidden from: data_dir (its own folders excepted),
the config file, the worker's home, and every other process's /proc entry
(environment, memory, open files). Symbolic links (and device files,
fifos, sockets) can be made only in the runner's own folders, never in
the storage's, so no link planted there can lead a built-in function or
the storage to a file the runner may not read. From ABI 6 (Linux 6.12),
the runner also cannot signal a process outside its own sandbox (the
worker, other runners: ``os.kill`` fails with EPERM) nor connect to an
abstract Unix socket made outside it. The restriction is the runner's and
its children's for good, needs no privilege, and is skipped (False) where
the kernel has no Landlock.

Landlock checks a path when it is opened, so a file already open is not
covered: a deployed function's runner has none of the worker's (it is a
fresh interpreter, exec'd with every descriptor closed but its socket).
"""

from __future__ import annotations

import ctypes
import os
import stat
import struct
from collections.abc import Iterable
from pathlib import Path

_CREATE_RULESET, _ADD_RULE, _RESTRICT_SELF = 444, 445, 446  # the same on every architecture
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38

WRITE_FILE = 1 << 1
READ_FILE, READ_DIR = 1 << 2, 1 << 3
REMOVE_DIR, REMOVE_FILE = 1 << 4, 1 << 5
MAKE = sum(1 << bit for bit in range(6, 13))  # char, dir, reg, sock, fifo, block, sym
MAKE_DIR, MAKE_REG = 1 << 7, 1 << 8
REFER = 1 << 13  # ABI 2: link or rename across folders
TRUNCATE = 1 << 14  # ABI 3
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1  # ABI 6


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _syscall(number: int, *args: object) -> int:
    return int(_libc.syscall(ctypes.c_long(number), *args))


def abi() -> int:
    """The kernel's Landlock ABI version (0: none)."""
    version = _syscall(_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION))
    return max(version, 0)


def restrict_writes(folders: Iterable[Path], files: Iterable[Path] = (), *, storage: Iterable[Path] = (),
                    hidden: Iterable[Path] = (), readable: Iterable[Path] = ()) -> bool:
    """From now on this process (and what it starts) writes only beneath ``folders`` and to ``files``.

    Beneath ``storage`` it may make, write, rename and remove folders and
    regular files, but no link, device, fifo or socket. With ``hidden``, it
    also reads nothing beneath those paths (but beneath ``folders``,
    ``storage`` and ``readable``, which may lie within them), nor the files
    of any other process in /proc: everything else stays readable
    (:func:`readable_except`). Where the kernel can (ABI 6), it can no
    longer signal a process outside its sandbox nor reach an abstract Unix
    socket made outside it. False, with nothing changed, where the kernel
    has no Landlock.
    """
    version = abi()
    if version < 1:
        return False
    handled = WRITE_FILE | REMOVE_DIR | REMOVE_FILE | MAKE
    if version >= 2:
        handled |= REFER
    if version >= 3:
        handled |= TRUNCATE
    hidden = list(hidden)
    reads: list[tuple[Path, int]] = []
    if hidden:
        handled |= READ_FILE | READ_DIR
        reads = [(Path("/"), READ_DIR),  # every folder can be listed (names are not contents)
                 *((path, READ_FILE | READ_DIR) for path in [*readable_except(hidden), *readable])]
    if version >= 6:  # handled_access_fs, handled_access_net (none: the network stays open), scoped
        attr = ctypes.create_string_buffer(struct.pack("=QQQ", handled, 0, SCOPE_SIGNAL | SCOPE_ABSTRACT_UNIX_SOCKET))
    else:
        attr = ctypes.create_string_buffer(struct.pack("=Q", handled))
    ruleset = _syscall(_CREATE_RULESET, attr, ctypes.c_size_t(len(attr.raw)), ctypes.c_uint32(0))
    if ruleset < 0:
        return False
    stored = handled & ~MAKE | MAKE_DIR | MAKE_REG  # storage: folders and files, nothing that leads elsewhere
    try:
        for path, rights in [*((p, handled) for p in folders), *((p, stored) for p in storage),
                             *((p, handled & (WRITE_FILE | TRUNCATE | READ_FILE)) for p in files), *reads]:
            try:
                parent = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue  # not there: nothing to allow
            try:
                if not stat.S_ISDIR(os.fstat(parent).st_mode):  # a file's rule may hold a file's rights only
                    rights &= WRITE_FILE | READ_FILE | TRUNCATE
                rule = ctypes.create_string_buffer(struct.pack("=Qi", rights, parent))
                _syscall(_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(_RULE_PATH_BENEATH), rule,
                         ctypes.c_uint32(0))
            finally:
                os.close(parent)
        if _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            return False
        return _syscall(_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)) == 0
    finally:
        os.close(ruleset)


def readable_except(hidden: Iterable[Path]) -> list[Path]:
    """The paths beneath which reading stays open so that nothing beneath ``hidden`` can be read.

    Landlock only allows: so every entry of every folder on the way from
    ``/`` to a hidden path is allowed, but the hidden one. In /proc, only
    this process's own entry and what is not a process's (``cpuinfo``,
    ``sys``, ``self``...) are allowed: another process's environment,
    memory and open files are hidden. An entry made later in a folder on
    the way (not beneath an allowed one) is not readable.
    """
    hidden_paths = {os.path.realpath(path) for path in hidden}
    own = str(os.getpid())
    found: list[Path] = []

    def within(path: str, folder: str) -> bool:
        return path == folder or path.startswith(folder.rstrip("/") + "/")

    def walk(folder: str) -> None:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            return
        for entry in entries:
            if folder == "/proc":
                if not entry.name.isdigit() or entry.name == own:
                    found.append(Path(entry.path))
                continue
            # A rule follows a link: what counts is where it leads.
            link = entry.is_symlink()
            target = os.path.realpath(entry.path) if link else entry.path
            if any(within(target, path) for path in hidden_paths):
                continue
            if target == "/proc" or any(within(path, target) for path in hidden_paths):  # on the way to one
                if not link and entry.is_dir(follow_symlinks=False):
                    walk(entry.path)
                continue  # (a link to a folder on the way: that folder is walked where it is)
            found.append(Path(entry.path))

    walk("/")
    return found


def scopes_signals() -> bool:
    """Whether a confined process is kept from signalling processes outside its sandbox (ABI 6, Linux 6.12)."""
    return abi() >= 6


__all__ = ["abi", "readable_except", "restrict_writes", "scopes_signals"]
