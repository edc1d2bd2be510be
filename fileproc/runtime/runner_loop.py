"""A runner's side of the pool (:mod:`.pool`): the loop that runs one step per message, until it is replaced.

Runs in the runner, forked from the worker or spawned as a fresh
interpreter (which first takes its setup: :func:`spawned_setup`). Each
step gets a memory limit (``RLIMIT_AS``) on top of what the runner holds
when it starts, its peak memory measured, and whatever it left running
killed (:mod:`fileproc.sandbox`'s limits, procfs and reaper); a runner that
kept too much (a leak) or is otherwise unfit says so in its reply, and ends.
A step sent :class:`Chained` behind the one before it runs only if that one
succeeded.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fileproc.processes import die_with_parent
from fileproc.runtime.wire import read_message, send
from fileproc.sandbox import procfs
from fileproc.sandbox.limits import limit_address_space
from fileproc.sandbox.reaper import become_subreaper, reap_descendants

if TYPE_CHECKING:
    import socket

log = logging.getLogger(__name__)

Work = Callable[[Any], Any]


@dataclass(frozen=True)
class Retire:
    """What ``work`` returns to send ``value`` back and then have its runner replaced, for ``reason``.

    For a failure ``work`` caught itself but that leaves the process unfit,
    such as a MemoryError the handler raised and the function's code reported.
    """

    value: Any
    reason: str


@dataclass(frozen=True)
class Chained:
    """A step sent while the one before it still runs (a stream's next batch): run only if that one
    succeeded, else answered at once with ``{"ok": False, "not_run": True}``.

    Succeeded: ``work`` returned without raising, no ``error`` in what it
    returned, and, with ``item_failures``, no ``batchItemFailures`` in the
    handler's ``result`` (Lambda's partial batch response). A stream's lane
    judges a batch by the same rule, so the next one runs only when the lane
    would have sent it anyway.
    """

    request: Any
    item_failures: bool = False


def succeeded(payload: dict[str, Any], item_failures: bool) -> bool:
    """Whether a step's reply is a success by :class:`Chained`'s rule."""
    if not payload.get("ok"):
        return False
    value = payload.get("value")
    if not isinstance(value, dict):
        return True
    if value.get("error") is not None:
        return False
    result = value.get("result")
    return not (item_failures and isinstance(result, dict) and result.get("batchItemFailures"))


def serve(sock: socket.socket, work: Work, warm: Callable[[], None] | None, memory_mb: int) -> None:
    """The runner's life: warm up, then run steps until told to stop (EOF) or replaced.

    Runs in the runner (forked or spawned), in a process group of its own.
    """
    die_with_parent()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    become_subreaper()
    if warm is not None:
        try:
            warm()
        except Exception:  # warming is an optimisation: a failing hook must not stop the runner
            log.warning("warm-up failed; running cold", exc_info=True)
    new = procfs.memory()
    limit = memory_mb * 1024  # kB
    # A step may map `memory_mb` on top of what the runner holds when it starts; the hard
    # limit stops a step raising its own soft one. A runner is replaced before it nears
    # the hard limit (see _leak), so every step gets its full allowance.
    hard = (new["VmSize"] + 2 * limit) * 1024
    held = new  # what the runner holds between steps (it does nothing while idle: read once per step)
    last: dict[str, Any] = {"ok": True}  # the reply to the step before (a chained step runs only after a success)
    while True:
        data = read_message(sock)
        if data is None:
            return
        try:
            message = pickle.loads(data)
        except Exception as exc:  # reported as the step's failure
            last = {"ok": False, "error_type": type(exc).__name__, "error": f"the step cannot be read: {exc}",
                    "peak_memory_kb": 0, "recycle": None}
            send(sock, _reply(last))
            continue
        if isinstance(message, Chained):
            if not succeeded(last, message.item_failures):
                last = {"ok": False, "not_run": True, "error_type": "NotRun",
                        "error": "not run: the step before it failed", "peak_memory_kb": 0, "recycle": None}
                send(sock, _reply(last))
                continue
            message = message.request
        limit_address_space((held["VmSize"] + limit) * 1024, hard)
        procfs.reset_peak()
        children_peak = procfs.children_peak()
        payload = last = _step(work, message, memory_mb)
        payload["left_running"] = reap_descendants()
        held = procfs.memory()
        payload["peak_memory_kb"] = procfs.peak(held, children_peak)
        payload["recycle"] = payload["recycle"] or _leak(new, held, memory_mb)
        send(sock, _reply(payload))
        if payload["recycle"]:
            return


def _step(work: Work, request: Any, memory_mb: int) -> dict[str, Any]:
    """Run one step: its outcome, and why the runner must be replaced after it (``recycle``, or None)."""
    recycle: str | None = None
    try:
        value = work(request)
        if isinstance(value, Retire):
            value, recycle = value.value, value.reason
        payload: dict[str, Any] = {"ok": True, "value": value}
    except MemoryError:
        payload = {"ok": False, "error_type": "MemoryError",
                   "error": f"the step needed more than its memory limit of {memory_mb} MB"}
        recycle = f"ran out of memory (limit {memory_mb} MB)"
    except BaseException as exc:  # everything is reported to the worker
        payload = {"ok": False, "error_type": type(exc).__name__, "error": str(exc) or type(exc).__name__}
        if not isinstance(exc, Exception):  # SystemExit and the like: this runner is not fit to go on
            recycle = f"the step raised {type(exc).__name__}"
    payload["recycle"] = recycle
    return payload


def _reply(payload: dict[str, Any]) -> bytes:
    try:
        return pickle.dumps(payload)
    except Exception as exc:
        return pickle.dumps({"ok": False, "error_type": type(exc).__name__,
                             "error": f"the step's result cannot be sent back: {exc}",
                             "peak_memory_kb": payload["peak_memory_kb"], "recycle": payload["recycle"]})


def _leak(new: dict[str, int], now: dict[str, int], memory_mb: int) -> str | None:
    """Why the runner must be replaced after this step, if it holds too much; else None."""
    limit = memory_mb * 1024
    kept = now["VmRSS"] - new["VmRSS"]
    if kept > limit:
        return f"leaked past its memory limit ({kept // 1024} MB kept after its steps, limit {memory_mb} MB)"
    mapped = now["VmSize"] - new["VmSize"]
    if mapped > limit:
        return f"its address space grew past its memory limit ({mapped // 1024} MB, limit {memory_mb} MB)"
    return None


def spawned_setup(sock: socket.socket) -> Any:
    """In a spawned runner: wait for its first message, take its environment and folder, return its setup.

    None if the worker closed the socket first (an interpreter started ahead, never used).
    The message is the pool's (:class:`.pool.Spawn`: ``env``, ``cwd``, ``setup``).
    """
    data = read_message(sock)
    if data is None:
        return None
    first = pickle.loads(data)
    os.environ.clear()
    os.environ.update(first["env"])
    if first["cwd"]:
        os.chdir(first["cwd"])
    return first["setup"]


def detach_inherited_pipes_and_sockets(keep: int) -> None:
    """Point every pipe and socket this runner inherited (but ``keep`` and stdio) at /dev/null.

    A runner is forked, never exec'd, from a worker that may have other
    threads: at that moment one of them may be starting a subprocess (its
    error pipe open) or hold connections (broker, database, store). A runner
    keeping a pipe's write end would leave that thread waiting for an EOF
    for as long as the runner lives; keeping a socket, a connection the
    worker closes stays open. Each such descriptor becomes /dev/null instead
    of being closed, so an object in this process that still holds its
    number closes /dev/null one day, never a file opened since.
    """
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:  # no /proc: nothing to look at
        return
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        for name in names:
            fd = int(name)
            if fd <= 2 or fd in (keep, devnull):
                continue
            try:
                kind = os.fstat(fd).st_mode
            except OSError:  # (the listing's own descriptor, closed by now)
                continue
            if stat.S_ISFIFO(kind) or stat.S_ISSOCK(kind):
                os.dup2(devnull, fd, inheritable=False)
    finally:
        os.close(devnull)


__all__ = ["Retire", "Work", "detach_inherited_pipes_and_sockets", "serve", "spawned_setup"]
