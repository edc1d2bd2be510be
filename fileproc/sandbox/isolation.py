"""What keeps a deployed function's runner from fileproc and from other functions, beyond Landlock.

Landlock (:mod:`.landlock`) decides which files a runner may read and
write, and, from Linux 6.12, which processes it may signal. It cannot stop
``connect()`` to a Unix socket it can name, nor a fork loop, nor what a
process running as root can do with its privileges. So, where fileproc
runs as root (as ``make serve`` does on a fresh machine, or a container):

- each runner runs as a user of its own (:func:`runner_uid`: a uid no
  account has, derived from its pid, so no two live runners share one), in
  the group :data:`FUNCTION_GID`, with no privilege left, as Lambda runs
  handlers as an unprivileged ``sbx_user``: fileproc's sockets (the
  embedded broker's is its owner's only), ``data_dir`` (mode 0711, its files
  0600) and the worker's processes are closed to it by the kernel's own
  permission checks;
- it gets a mount namespace of its own (:func:`private_view`): a private
  ``/tmp`` and ``/dev/shm``, gone with the runner, never shared with
  another, and nothing of ``data_dir`` or the home folder but the paths it
  needs (its package, its scratch folder, the local storage's folders);
- its user may run at most :data:`MAX_PROCESSES` processes and threads
  (Lambda's limit), counted for that runner alone.

Without root the runner keeps the worker's user: Landlock and the process
limit (counted on top of what that user runs already) still apply; the
broker's password keeps it out of the broker; ``/dev/shm`` is not writable.
:func:`protections` says which of these hold on this host (``fileproc doctor``).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

RUNNER_UID_BASE = 2_000_000_000
"""A runner's uid is this plus its pid (pids stay below 2**22): far from any account's."""

FUNCTION_GID = RUNNER_UID_BASE
"""The group every runner is in: what lets it write the local storage's folders (``context.output``)."""

MAX_PROCESSES = 1024
"""Processes and threads one runner may run at once (Lambda's quota)."""

_MS_NOSUID, _MS_NODEV = 2, 4
_PR_SET_DUMPABLE = 4


def runner_tmp(buckets: Path) -> Path:
    """Where a runner's ``context.output`` writes before the rename onto its key (local backend).

    Within the buckets' folder (a name no bucket can have, which the watcher
    and listings skip): the rename must stay within the one folder a runner
    is given, where data_dir/tmp would be another mount in its namespace.
    """
    return buckets / ".fileproc-tmp"


def switches_users() -> bool:
    """Whether runners run as users of their own here (fileproc runs as root)."""
    return os.geteuid() == 0


def runner_uid(pid: int) -> int:
    """The uid (and gid) of the runner whose pid is ``pid``."""
    return RUNNER_UID_BASE + pid


_CLONE_NEWNS = 0x00020000
_MS_BIND, _MS_REC, _MS_PRIVATE = 4096, 16384, 1 << 18

HOST_ENTRIES = Path("/mnt")
"""Where a runner with a private /tmp sees the host /tmp's paths it needs (in its own mount namespace)."""


def private_view(tmp_mb: int, shm_mb: int, needed: list[Path], covered: list[Path]) -> bool:
    """A mount namespace of this process's own, where it sees only what it needs of fileproc's folders.

    - ``/tmp`` is a tmpfs of ``tmp_mb``, like Lambda's: private, kept for
      the runner's life, as big as the function's disk limit (a handler
      that fills it gets ENOSPC; nobody else's /tmp fills). The ``needed``
      paths within the host's /tmp stay at their paths, as links to where
      they are bound under :data:`HOST_ENTRIES`, so writing beneath them is
      not writing beneath /tmp (which matters to Landlock's rules);
    - ``/dev/shm`` is a tmpfs of ``shm_mb`` of its own;
    - each ``covered`` folder (data_dir, the home folder) becomes an empty
      tmpfs holding only the ``needed`` paths within it, bound from the real
      ones; a covered file (the config file) reads as empty. What is not
      needed (the state database, tokens, the broker's socket, other
      functions' packages) is not there at all.

    Every folder on the way to a needed path can be passed through, so a
    process that gives up root can still reach what it needs. False
    (nothing changed) where the OS does not allow it: not root, or no
    CAP_SYS_ADMIN.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    host_tmp = Path("/tmp").resolve()
    needed = [p.resolve() for p in needed if os.path.lexists(p)]
    in_tmp = [p.relative_to(host_tmp) for p in _outermost(p for p in needed if p.is_relative_to(host_tmp))
              if p != host_tmp]
    if in_tmp and not HOST_ENTRIES.is_dir():
        return False
    if libc.unshare(_CLONE_NEWNS) != 0:
        return False
    # Mounts made from now on stay in this namespace (the host never sees them).
    if libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
        return False
    covers = _outermost(path.resolve() for path in covered if path.exists())
    covers = [c for c in covers if not c.is_relative_to(host_tmp) and c != Path("/")]  # (within /tmp: done below)
    for folder in covers:
        if folder.is_dir():
            within = _outermost(p for p in needed if p.is_relative_to(folder))
            _cover(libc, folder, [p.relative_to(folder) for p in within if p != folder])
        elif libc.mount(b"/dev/null", str(folder).encode(), None, _MS_BIND, None) != 0:
            return False
    # Opened in the new namespace (a bind's source must be in it): reachable after /tmp is covered.
    original = os.open("/tmp", os.O_RDONLY | os.O_DIRECTORY)
    try:
        if in_tmp and libc.mount(b"tmpfs", str(HOST_ENTRIES).encode(), b"tmpfs", 0, b"size=1m,mode=755") != 0:
            return False
        if libc.mount(b"tmpfs", b"/tmp", b"tmpfs", 0, f"size={tmp_mb}m,mode=1777".encode()) != 0:
            return False
        _bind_each(libc, original, HOST_ENTRIES, in_tmp)
        for name in sorted({path.parts[0] for path in in_tmp}):
            os.symlink(HOST_ENTRIES / name, host_tmp / name)
    finally:
        os.close(original)
    if os.path.isdir("/dev/shm"):
        libc.mount(b"tmpfs", b"/dev/shm", b"tmpfs", _MS_NOSUID | _MS_NODEV, f"size={shm_mb}m,mode=1777".encode())
    return True


def _outermost(paths: Iterable[Path]) -> list[Path]:
    """``paths`` without those within another of them."""
    found: list[Path] = []
    for path in sorted(set(paths), key=lambda p: len(p.parts)):
        if not any(path.is_relative_to(outer) for outer in found):
            found.append(path)
    return found


def _cover(libc: ctypes.CDLL, folder: Path, keep: list[Path]) -> None:
    """Mount an empty tmpfs over ``folder``, then bind back the paths ``keep`` (relative to it)."""
    original = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if libc.mount(b"tmpfs", str(folder).encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV, b"size=1m,mode=711") != 0:
            raise OSError(ctypes.get_errno(), f"cannot cover {folder}")
        _bind_each(libc, original, folder, keep)
    finally:
        os.close(original)


def _bind_each(libc: ctypes.CDLL, source: int, target: Path, paths: list[Path]) -> None:
    """Bind each of ``paths`` (relative to the folder open as ``source``) at the same place beneath ``target``."""
    for relative in paths:
        origin, place = f"/proc/self/fd/{source}/{relative}", target / relative
        for folder in reversed(place.parents):  # the way to it: folders that can be passed through
            if folder.is_relative_to(target) and not folder.exists():
                folder.mkdir(mode=0o755)
                os.chmod(folder, 0o711)
        if os.path.isdir(origin):
            place.mkdir(exist_ok=True)
        else:
            place.touch()
        if libc.mount(origin.encode(), str(place).encode(), None, _MS_BIND | _MS_REC, None) != 0:
            raise OSError(ctypes.get_errno(), f"cannot bind {relative} at {place}")


def become_runner_user(owned: list[Path]) -> int:
    """Drop root for good: this process becomes :func:`runner_uid` of its pid; its uid.

    ``owned`` (its scratch folder) is given to that user first. Nothing of
    root is kept: no supplementary group but :data:`FUNCTION_GID`, real,
    effective and saved ids all changed, so no capability is left either.
    """
    uid = runner_uid(os.getpid())
    for path in owned:
        os.chown(path, uid, uid)
    os.setgroups([FUNCTION_GID])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    os.umask(0o002)  # what it makes in the storage's folders stays writable to the next runner
    if os.getuid() != uid or os.geteuid() != uid:  # never go on as root by mistake
        raise PermissionError(f"could not switch to the runner user {uid}")
    # A changed uid makes the kernel hand its /proc/self to root: give it back (its memory, its
    # environment, its limits), as a process started as that user would have it.
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_DUMPABLE, 1, 0, 0, 0)
    return uid


def limit_processes(extra: int = MAX_PROCESSES) -> None:
    """At most ``extra`` more processes and threads for this process's user, from now on.

    As a user of its own (:func:`become_runner_user`) that is the runner's
    own count. Under a shared user, the count already running (at most the
    host's whole count) is added, so the worker and the rest of that user's
    processes are not starved by the limit, and a fork loop still stops.
    """
    running = 1 if os.getuid() >= RUNNER_UID_BASE else _tasks_on_host()
    limit = running + extra
    _, hard = resource.getrlimit(resource.RLIMIT_NPROC)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_NPROC, (limit, limit))


def _tasks_on_host() -> int:
    # /proc/loadavg's fourth field: runnable/total tasks (threads included) on the host.
    try:
        return int(Path("/proc/loadavg").read_text().split()[3].split("/")[1])
    except (OSError, IndexError, ValueError):
        return 4096


def prepare_data_dir(data_dir: Path, shared: list[Path]) -> None:
    """Close ``data_dir`` to runner users and open the folders they write (as root only; else nothing).

    ``data_dir`` and its ``functions`` and ``scratch`` folders can be passed
    through (0711: a runner reaches its own package and scratch folder by
    path, lists nothing); everything else in it (state database, tokens,
    the broker's and the search index's folders) is closed to other
    users. ``shared`` (the local storage's folders) belong to
    :data:`FUNCTION_GID`, group-writable with the setgid bit, so what a
    runner or the worker makes in them stays writable to the next runner.
    """
    if not switches_users():
        return
    data_dir.mkdir(parents=True, exist_ok=True)
    for folder in (data_dir, data_dir / "functions", data_dir / "scratch"):
        folder.mkdir(exist_ok=True)
        os.chmod(folder, 0o711)
    passed = {data_dir / "functions", data_dir / "scratch", *(path.resolve() for path in shared)}
    for entry in os.scandir(data_dir):
        if Path(entry.path).resolve() not in passed and not entry.is_symlink():
            with contextlib.suppress(OSError):
                os.chmod(entry.path, stat.S_IMODE(entry.stat(follow_symlinks=False).st_mode) & 0o770)
    for folder in shared:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = runner_tmp(folder)
        tmp.mkdir(exist_ok=True)
        os.chown(tmp, -1, FUNCTION_GID)
        os.chmod(tmp, 0o3730)  # sticky: a runner removes or renames only its own files there; lists none
        if os.stat(folder).st_gid == FUNCTION_GID:
            continue  # done before (a walk of a big bucket is not repeated at each start)
        for path in [folder, *(Path(top) / name for top, names, _ in os.walk(folder) for name in names)]:
            with contextlib.suppress(OSError):
                os.chown(path, -1, FUNCTION_GID, follow_symlinks=False)
                if path.is_dir() and not path.is_symlink():
                    os.chmod(path, stat.S_IMODE(os.stat(path).st_mode) | 0o2070)
        os.chmod(folder, stat.S_IMODE(os.stat(folder).st_mode) | 0o2070)


@dataclass(frozen=True)
class Protection:
    """One protection of deployed functions, and whether it holds on this host."""

    name: str
    active: bool
    detail: str


def protections(embedded_broker: bool, broker_url: str, database_url: str) -> list[Protection]:
    """What keeps a deployed function from fileproc on this host, as ``fileproc doctor`` reports it."""
    from fileproc.sandbox.landlock import abi

    version = abi()
    root = switches_users()
    found = [
        Protection("files", version >= 1,
                   f"Landlock ABI {version}: a function writes only its /tmp and the folders fileproc gives it, "
                   "and reads nothing of fileproc's" if version >= 1 else
                   "no Landlock in this kernel (Linux 5.13+): a function can read and write what its user can"),
        Protection("signals", version >= 6 or root,
                   "a function cannot signal the worker or other functions"
                   + (" (Landlock ABI 6)" if version >= 6 else " (a user of its own)") if version >= 6 or root else
                   "a function can signal every process of fileproc's user (needs Linux 6.12+, or root)"),
        Protection("user", root,
                   "each runner runs as a user of its own, with no privilege: data_dir and fileproc's sockets "
                   "are closed to it" if root else
                   "runners share fileproc's user (run fileproc as root to give each a user of its own)"),
        Protection("tmp", root,
                   "private /tmp and /dev/shm per runner (tmpfs, gone with it)" if root else
                   "no mount namespace without root: TMPDIR is a private folder, /tmp is the host's, "
                   "/dev/shm is not writable"),
        Protection("processes", True,
                   f"at most {MAX_PROCESSES} processes and threads per runner" if root else
                   f"at most {MAX_PROCESSES} processes and threads per runner, on top of what fileproc's user runs"),
    ]
    if embedded_broker:
        found.append(Protection("broker", True, "the embedded broker asks for a password kept in data_dir, "
                                                "and has CONFIG, MODULE and DEBUG renamed away"))
    else:
        protected = "@" in broker_url.split("://", 1)[-1]
        found.append(Protection("broker", protected, "the broker URL carries credentials" if protected else
                                "the broker URL has no password: a function that can reach it can read and "
                                "change the queues (set requirepass or an ACL user)"))
    if database_url.startswith("postgresql"):
        protected = ":" in database_url.split("://", 1)[-1].split("@", 1)[0] if "@" in database_url else False
        found.append(Protection("database", protected, "the database URL carries a password" if protected else
                                "the database URL has no password: a function that can reach PostgreSQL may "
                                "log in (use password authentication)"))
    return found


__all__ = ["FUNCTION_GID", "HOST_ENTRIES", "MAX_PROCESSES", "RUNNER_UID_BASE", "Protection", "become_runner_user",
           "limit_processes", "prepare_data_dir", "private_view", "protections", "runner_tmp", "runner_uid",
           "switches_users"]
