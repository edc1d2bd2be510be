"""Warm runners: a step's process, kept for the next step of the same function.

Like Lambda's execution environments: the first step of a function in a
worker process forks a *runner* (cold start); the runner calls the function
module's ``warm()`` hook, if it has one, so its libraries are initialised
before the first event, then runs steps sent to it over a socket, one at a
time, until it is replaced. Each worker process has its own pool (a forked
process never uses its parent's runners). A step may be sent while the one
before it still runs, chained behind it on its runner (a stream's next
batch: :meth:`RunnerPool.start` with ``after``), which starts it only if
that one succeeded.

A runner keeps everything a step ran in a process of its own had before:

- its own process group: a step that times out or is cancelled is stopped
  by killing the group (the runner and whatever it started: ffmpeg, say);
  processes a *finished* step left behind are killed by the runner itself,
  which is their subreaper, so nothing a step started outlives it;
- it dies with the worker process (``PR_SET_PDEATHSIG``): a worker killed
  with ``kill -9`` leaves no runner behind;
- a memory limit per step (``RLIMIT_AS``): each step may map up to its
  memory limit on top of what the runner holds when the step starts; a step
  past it fails with MemoryError;
- peak memory per step, from the kernel's high-water mark (``VmHWM``, reset
  before each step through ``/proc/self/clear_refs``).

A deployed (user) function's runner is not forked but *spawned*
(:class:`Spawn`): a fresh interpreter exec'd with an empty environment, no
descriptor of the worker but its socket, and nothing of the worker's memory;
it speaks the same protocol and runs the same loop
(:func:`.runner_loop.serve`). Its first message gives it its environment,
working folder and setup (:func:`.runner_loop.spawned_setup`). Its stdout
and stderr are a memory file the worker holds too, where it writes each
invocation's output as it goes: if it dies mid-step (timed out, cancelled,
killed, crashed), what it wrote is read from there and comes back in the
result's ``output``. So that a cold
start does not wait for an interpreter to start and import the runtime,
the pool keeps one such interpreter started ahead (a *spare*, per runner
module), not yet given to any function: the next new runner of any
deployed version takes it, and another is started at once.

A runner idle for ``idle_seconds`` (``runtime.idle_seconds``) is stopped by
the pool's reaper thread, so a function no longer busy holds no memory
(scale to zero); the reaper and a step taking a runner both go through the
pool's lock, so a runner is either handed to a step or reaped, never both.
*Provisioned* runners (:meth:`RunnerPool.provision`: Lambda's provisioned
concurrency) are started ahead of any step and never reaped.

A runner is replaced (killed; the next step gets a new, cold one) when its
step timed out, ran out of memory, crashed, was cancelled, or when it holds
more than its memory limit beyond what it held when it was new (a leak:
checked after each step). The step's result says why in ``recycled``.

This module is the worker's side: the pool, and how a runner is started
(forked or spawned). The runner's side is :mod:`.runner_loop`; what passes
between them, :mod:`.wire`; the limits, memory readings and reaping,
:mod:`fileproc.sandbox`.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from fileproc.functions.steps import ChildResult
from fileproc.runtime import cpus, wire
from fileproc.runtime.runner_loop import Chained, Retire, Work, detach_inherited_pipes_and_sockets, serve
from fileproc.sandbox.procfs import high_water_mark

MAX_IDLE = 4
"""Idle runners one worker process keeps (the least recently used beyond this are stopped)."""

IDLE_SECONDS = 300.0
"""A runner idle this long is stopped: it holds memory for a function no longer busy (``runtime.idle_seconds``)."""

PROVISIONED, WARM = "provisioned", "warm"
"""The states :meth:`RunnerPool.counts` reports a live runner in."""


@dataclass(frozen=True)
class Spawn:
    """How to start a runner as a fresh interpreter instead of a fork of the worker.

    The runner is ``python -I -S -c BOOT`` running ``module.main()`` (which
    calls :func:`spawned_setup`, then :func:`serve`), started with an empty
    environment and every descriptor closed but its socket. Its first
    message makes ``env`` its whole environment and ``cwd`` its working
    folder, and gives it ``setup`` (plain, picklable data: the new
    interpreter has none of the worker's classes). ``path`` is its
    ``sys.path``: the worker's own (site-packages already expanded), so
    ``site`` need not run.
    """

    module: str
    setup: Any
    env: dict[str, str]
    cwd: str | None = None
    path: tuple[str, ...] = ()


@dataclass
class _Runner:
    pid: int
    sock: socket.socket
    key: Hashable
    owner: object  # what `work` is bound to (a Service): a runner serves only its owner
    spawn: Spawn | None = None  # how a spawned one was started: it serves only that (its credentials, say)
    steps: int = 0
    idle_since: float = field(default_factory=time.monotonic)
    output: int | None = None  # a spawned runner's stdout and stderr: a memory file, read if it dies mid-step
    unreported: str | None = None  # what it had written there when it was stopped
    idle_seconds: float = IDLE_SECONDS  # stopped once idle this long (unless provisioned)
    provisioned: bool = False  # kept warm on purpose: never reaped, never a surplus

    def expired(self, now: float) -> bool:
        return not self.provisioned and now - self.idle_since > self.idle_seconds

    @property
    def function(self) -> str:
        """The function's name, for counts (the first part of a ``(name, version, memory)`` key)."""
        key = self.key
        return str(key[0] if isinstance(key, tuple) and key else key)


@dataclass
class Running:
    """A step sent to its runner (:meth:`RunnerPool.start`), until :meth:`result` says how it ended."""

    pool: RunnerPool
    runner: _Runner
    started: float  # (monotonic) when it was asked for (or, chained, when the one before it ended): its timeout
    timeout: float
    cold: bool
    cancel: threading.Event | None
    behind: Running | None = None  # chained: the step its runner runs first
    next: Running | None = None  # the step chained behind this one
    inherited: bool = False  # chained: the runner went on to it (the step before it did not end the runner)
    finished: bool = False  # its end was waited for (how it ended, or an error)
    _result: ChildResult | None = None

    def result(self) -> ChildResult:
        """Wait for the step to end (at most its timeout) and give the runner back, or stop it."""
        if self._result is None:
            try:
                self._result = self.pool._ended(self)
            finally:
                self.finished = True
        return self._result


class RunnerPool:
    """Warm runners of one worker process, by key (a function and its memory limit)."""

    def __init__(self) -> None:
        self._idle: list[_Runner] = []  # least recently used first
        self._spares: dict[Hashable, _Runner] = {}  # interpreters started ahead, by module and path
        self._live: dict[int, _Runner] = {}  # every runner given to a function and not stopped, idle or busy
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._reaper: threading.Thread | None = None
        self._wake = threading.Event()  # set when the next expiry may have moved earlier
        self._spare_seconds = IDLE_SECONDS  # an interpreter started ahead lives this long unused

    def run(self, key: Hashable, owner: object, work: Work | None, request: Any, *, timeout: float,
            memory_mb: int, cancel: threading.Event | None = None, warm: Callable[[], None] | None = None,
            spawn: Spawn | None = None, idle_seconds: float = IDLE_SECONDS) -> ChildResult:
        """Run ``work(request)`` in a runner for ``key`` and say how it ended.

        ``work`` and ``warm`` are used only when a new runner is forked (they
        are what it runs); ``request`` and what ``work`` returns must pickle.
        With ``spawn``, a new runner is a fresh interpreter instead, and what
        it runs is its module's. Setting ``cancel`` stops the step (and its
        runner) at once. The runner is stopped once idle for ``idle_seconds``
        after it (unless it is provisioned).
        """
        return self.start(key, owner, work, request, timeout=timeout, memory_mb=memory_mb, cancel=cancel,
                          warm=warm, spawn=spawn, idle_seconds=idle_seconds).result()

    def start(self, key: Hashable, owner: object, work: Work | None, request: Any, *, timeout: float,
              memory_mb: int, cancel: threading.Event | None = None, warm: Callable[[], None] | None = None,
              spawn: Spawn | None = None, idle_seconds: float = IDLE_SECONDS, after: Running | None = None,
              item_failures: bool = False) -> Running:
        """:meth:`run` in two halves: ``request`` sent to a runner now, its result waited for by
        :meth:`Running.result` (which must be called: until then the runner is this step's)."""
        if after is not None:
            return self._chain(after, request, timeout, cancel, item_failures)
        started = time.monotonic()
        message = pickle.dumps(request)
        runner = self._take(key, owner, spawn)
        cold = runner is None
        if runner is not None:
            try:
                wire.send(runner.sock, message)
            except OSError:  # it died while idle (its parent thread ended, the OOM killer): start anew
                self._stop(runner)
                runner, cold = None, True
        if runner is None:
            runner = self._new(key, owner, work, warm, memory_mb, spawn)
            with contextlib.suppress(OSError):  # if it died at once, it is reported as a crash below
                wire.send(runner.sock, message)
        runner.idle_seconds = idle_seconds  # (once no longer provisioned, if it is)
        self._spare_seconds = idle_seconds  # an interpreter started ahead lives as long as an idle runner
        runner.steps += 1
        return Running(self, runner, started, timeout, cold, cancel)

    def _chain(self, after: Running, request: Any, timeout: float, cancel: threading.Event | None,
               item_failures: bool) -> Running:
        """``request`` sent now to ``after``'s runner, which runs it once ``after`` ended, only if that succeeded
        (:class:`~fileproc.runtime.runner_loop.Chained`): a stream's next batch, so its runner never waits."""
        if after.next is not None or after.finished:
            raise ValueError("a step is chained behind one still running, and only one")
        running = Running(self, after.runner, 0.0, timeout, False, cancel, behind=after)
        try:
            wire.send(after.runner.sock, pickle.dumps(Chained(request, item_failures)))
        except OSError:  # its runner died: the step before it will say so
            running.finished, running._result = True, not_run("its runner is gone")
            return running
        after.next = running
        after.runner.steps += 1
        return running

    def _ended(self, running: Running) -> ChildResult:
        behind = running.behind
        if behind is not None:
            if not behind.finished:
                behind.result()
            running.behind = None  # (no chain of every step a runner ran kept alive)
            if not running.inherited:
                return not_run("the step before it ended its runner (it timed out, crashed or was replaced)")
            running.started = time.monotonic()
        runner, timeout = running.runner, running.timeout
        try:
            reply = wire.receive(runner.sock, running.started + timeout, running.cancel)
        except BaseException:  # this worker is being stopped mid-step: so is the step
            self._stop(runner)
            raise
        elapsed = time.monotonic() - running.started
        common: dict[str, Any] = {"duration_ms": int(elapsed * 1000), "duration_s": elapsed, "cold": running.cold,
                                  "runner_pid": runner.pid}
        if reply is wire.CANCELLED or reply is wire.TIMED_OUT:
            common["peak_memory_kb"] = high_water_mark(runner.pid)  # reset when the step started
            self._stop(runner)
            common["output"] = runner.unreported
            if reply is wire.CANCELLED:
                return ChildResult(False, cancelled=True, error_type="Cancelled",
                                   error="stopped: the step's lease was lost", recycled="cancelled", **common)
            return ChildResult(False, timed_out=True, error_type="StepTimeout", error=f"timed out after {timeout:g} s",
                               recycled="timed out", **common)
        if reply is None:
            status, peak = self._stop(runner)
            reason = _how_it_died(status)
            return ChildResult(False, error_type="StepCrashed", error=f"the step's process died ({reason})",
                               recycled=f"crashed ({reason})", peak_memory_kb=peak, output=runner.unreported,
                               **common)
        assert isinstance(reply, bytes)
        payload = _decoded(reply, plain=runner.spawn is not None)
        if payload is None:  # a deployed function wrote its own "reply": the runner is not to be trusted again
            status, peak = self._stop(runner)
            return ChildResult(False, error_type="StepCrashed", error="the step's process sent a reply that is "
                               "not plain data (the function wrote to its runner's socket)", recycled="bad reply",
                               peak_memory_kb=peak, output=runner.unreported, **common)
        skipped = payload.get("not_run", False)  # (chained behind a failure: the runner never started it)
        if not payload["ok"] and not skipped and runner.output is not None:  # it raised past its own capture
            common["output"] = wire.read_output_text(runner.output)
        recycled = payload.get("recycle")
        if recycled:
            self._stop(runner)
        elif running.next is not None:  # the runner goes on to the step chained behind this one
            running.next.inherited, running.next = True, None
        else:
            self._keep(runner)
        return ChildResult(
            ok=payload["ok"], value=payload.get("value"), error_type=payload.get("error_type"),
            error=payload.get("error"), peak_memory_kb=payload.get("peak_memory_kb", 0), recycled=recycled,
            left_running=payload.get("left_running", 0), not_run=skipped, **common,
        )

    def close(self, *, spares: bool = True) -> None:
        """Stop every idle runner (at exit, or in tests), and the interpreters started ahead unless not ``spares``."""
        with self._lock:
            idle, self._idle = self._idle, []
            if spares:
                idle += self._spares.values()
                self._spares = {}
        for runner in idle:
            self._stop(runner)

    def idle(self) -> int:
        """How many warm runners wait for a step."""
        with self._lock:
            return len(self._idle)

    def counts(self) -> dict[tuple[str, str], int]:
        """Live runners (idle or running a step) by (function, ``provisioned`` or ``warm``)."""
        found: dict[tuple[str, str], int] = {}
        with self._lock:
            self._forget_if_forked()
            for runner in self._live.values():
                state = (runner.function, PROVISIONED if runner.provisioned else WARM)
                found[state] = found.get(state, 0) + 1
        return found

    def provision(self, key: Hashable, owner: object, count: int, *, work: Work | None = None,
                  warm: Callable[[], None] | None = None, memory_mb: int = 128, spawn: Spawn | None = None,
                  idle_seconds: float = IDLE_SECONDS) -> int:
        """Keep ``count`` runners for ``key`` warm on purpose (started now if missing, never reaped); how many started.

        Runners that were provisioned beyond ``count`` become ordinary warm
        ones (stopped once idle). A provisioned runner replaced after a step
        (it crashed, timed out, leaked) is started again at the next call.
        ``idle_seconds``: how long one lives idle once no longer provisioned.
        """
        with self._lock:
            self._forget_if_forked()
            mine = [r for r in self._live.values() if r.key == key and r.owner is owner and r.spawn == spawn]
            kept = [r for r in mine if r.provisioned]
            for runner in kept[count:]:
                runner.provisioned, runner.idle_since = False, time.monotonic()
            for runner in [r for r in mine if not r.provisioned][:max(0, count - len(kept))]:
                runner.provisioned = True  # a warm one already there counts
            missing = count - sum(1 for r in mine if r.provisioned)
        for _ in range(max(0, missing)):
            runner = self._new(key, owner, work, warm, memory_mb, spawn)
            runner.provisioned, runner.idle_seconds = True, idle_seconds
            self._keep(runner)
        return max(0, missing)

    def unprovision(self, keep: Callable[[Hashable, object], bool]) -> None:
        """Provisioned runners whose key and owner ``keep`` refuses become ordinary warm ones (a version replaced)."""
        with self._lock:
            for runner in self._live.values():
                if runner.provisioned and not keep(runner.key, runner.owner):
                    runner.provisioned, runner.idle_since = False, time.monotonic()
        self._wake.set()

    def reap(self) -> int:
        """Stop the runners (and interpreters started ahead) idle too long now; how many."""
        expired: list[_Runner] = []
        with self._lock:
            self._forget_if_forked()
            now = time.monotonic()
            for runner in list(self._idle):
                if runner.expired(now):
                    self._idle.remove(runner)
                    expired.append(runner)
            for interpreter, spare in list(self._spares.items()):  # no deployed function ran here lately
                if now - spare.idle_since > self._spare_seconds:
                    expired.append(self._spares.pop(interpreter))
        for runner in expired:
            self._stop(runner)
        return len(expired)

    def _next_expiry(self) -> float | None:
        with self._lock:
            ends = [r.idle_since + r.idle_seconds for r in self._idle if not r.provisioned]
            ends += [s.idle_since + self._spare_seconds for s in self._spares.values()]
        return min(ends) if ends else None

    def _reap_forever(self) -> None:
        """The reaper thread: sleeps until the next runner's idle time runs out, stops it, and so on."""
        while True:
            expiry = self._next_expiry()
            wait = None if expiry is None else max(0.0, expiry - time.monotonic()) + 0.05
            self._wake.wait(wait)
            self._wake.clear()
            if self._pid != os.getpid():  # (a copy of this thread never runs in a fork; belt and braces)
                return
            try:
                self.reap()
            except Exception:  # never let the reaper die: an idle runner would then live forever
                import logging

                logging.getLogger(__name__).exception("reaping idle runners failed")

    def _watch_idle(self) -> None:
        """Start the reaper thread if this process has none (the first runner kept idle), or wake it."""
        if self._reaper is None or not self._reaper.is_alive():
            with self._lock:
                if self._reaper is None or not self._reaper.is_alive():
                    self._reaper = threading.Thread(target=self._reap_forever, name="fileproc-runner-reaper",
                                                    daemon=True)
                    self._reaper.start()
        self._wake.set()

    def _new(self, key: Hashable, owner: object, work: Work | None, warm: Callable[[], None] | None,
             memory_mb: int, spawn: Spawn | None) -> _Runner:
        runner = self._spawned(key, owner, spawn) if spawn else \
            on_lasting_thread(_start, key, owner, work, warm, memory_mb)
        with self._lock:
            self._forget_if_forked()
            self._live[runner.pid] = runner
        return runner

    # --- keeping runners ------------------------------------------------------------------

    def _take(self, key: Hashable, owner: object, spawn: Spawn | None = None) -> _Runner | None:
        expired: list[_Runner] = []
        found = None
        with self._lock:
            self._forget_if_forked()
            now = time.monotonic()
            for runner in list(self._idle):
                # Idle too long, or started another way than this key's runners now are (credentials
                # since renewed: it would never be used again, and should not hold them meanwhile).
                replaced = spawn is not None and runner.key == key and runner.owner is owner and runner.spawn != spawn
                if runner.expired(now) or replaced:
                    self._idle.remove(runner)
                    expired.append(runner)
            for interpreter, spare in list(self._spares.items()):  # no deployed function ran here lately
                if now - spare.idle_since > self._spare_seconds:
                    expired.append(self._spares.pop(interpreter))
            for runner in reversed(self._idle):  # the most recently used: its caches are warmest
                if runner.key == key and runner.owner is owner and runner.spawn == spawn:
                    self._idle.remove(runner)
                    found = runner
                    break
        for runner in expired:
            self._stop(runner)
        return found

    def _keep(self, runner: _Runner) -> None:
        runner.idle_since = time.monotonic()
        with self._lock:
            self._forget_if_forked()
            self._idle.append(runner)
            ordinary = [r for r in self._idle if not r.provisioned]  # provisioned ones are never a surplus
            surplus = ordinary[:-MAX_IDLE]
            for old in surplus:
                self._idle.remove(old)
        for old in surplus:
            self._stop(old)  # (their wait status is of no interest)
        self._watch_idle()

    def _stop(self, runner: _Runner) -> tuple[int | None, int]:
        """Kill the runner and its process group: its wait status (None if not ours to reap), its peak RSS in kB.

        What a spawned runner had written to its output file, once it is
        dead, is left in ``runner.unreported`` (its output file is closed).
        """
        with self._lock:
            if self._live.get(runner.pid) is runner:
                del self._live[runner.pid]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(runner.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(runner.pid, signal.SIGKILL)  # in case it died before making its group
        runner.sock.close()
        try:
            _, status, usage = os.wait4(runner.pid, 0)
        except ChildProcessError:
            status, usage = None, None
        if runner.output is not None:
            runner.unreported = wire.read_output_text(runner.output)
            os.close(runner.output)
            runner.output = None
        return status, int(usage.ru_maxrss) if usage else 0

    def _spawned(self, key: Hashable, owner: object, spawn: Spawn) -> _Runner:
        """A new runner for ``spawn``: the interpreter started ahead if it is still there; another one ahead."""
        interpreter = (spawn.module, spawn.path)
        with self._lock:
            self._forget_if_forked()
            spare = self._spares.pop(interpreter, None)
        if spare is not None:
            try:
                wire.send(spare.sock, _setup_message(spawn))
            except OSError:  # it died while waiting (the OOM killer): start one now
                self._stop(spare)
                spare = None
        runner = spare or on_lasting_thread(_spawn, spawn)
        runner.key, runner.owner, runner.spawn = key, owner, spawn
        ahead = on_lasting_thread(_spawn, Spawn(spawn.module, None, {}, path=spawn.path), setup=False)
        with self._lock:
            surplus = self._spares.pop(interpreter, None)  # (another thread's, started meanwhile)
            self._spares[interpreter] = ahead
        if surplus is not None:
            self._stop(surplus)
        self._watch_idle()
        return runner

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()  # another thread may have held it at the fork
        self._reaper, self._wake = None, threading.Event()  # (threads are not forked)
        self._forget_if_forked()

    def _forget_if_forked(self) -> None:
        # A forked copy of this process (a Celery pool child, a runner) sees its parent's
        # runners: they are not its children and not its to use. Only close its copies of
        # the sockets (the parent's stay open).
        if self._pid != os.getpid():
            for runner in [*self._idle, *self._spares.values()]:
                runner.sock.close()
                if runner.output is not None:
                    os.close(runner.output)
            self._idle, self._spares, self._live = [], {}, {}
            self._pid = os.getpid()


# --- starting a runner: forked, or a fresh interpreter ---------------------------------------

_starter: ThreadPoolExecutor | None = None
_starter_pid = 0
_starter_lock = threading.Lock()


def on_lasting_thread(start: Callable[..., _Runner], *args: Any, **kwargs: Any) -> _Runner:
    """``start(*args)`` on a thread that lives as long as this process: where every runner is started.

    A runner dies with the *thread* that started it (``PR_SET_PDEATHSIG``
    follows the thread, not the process): a runner started by a short-lived
    thread (a web server's worker thread, a stream's lane that was stopped)
    would be killed with it, however warm. The main thread starts its own;
    any other hands the start to one thread kept for it.
    """
    global _starter, _starter_pid
    if threading.current_thread() is threading.main_thread():
        return start(*args, **kwargs)
    with _starter_lock:
        if _starter is None or _starter_pid != os.getpid():  # (a fork has no copy of the thread)
            _starter, _starter_pid = ThreadPoolExecutor(1, thread_name_prefix="fileproc-runner-starter"), os.getpid()
        starter = _starter
    return starter.submit(start, *args, **kwargs).result()



def _start(key: Hashable, owner: object, work: Work | None, warm: Callable[[], None] | None,
           memory_mb: int) -> _Runner:
    assert work is not None, "a forked runner needs its work"
    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # the runner
        code = 0
        try:
            cpus.free(0)  # (forked by a thread kept on one CPU, it would run only there)
            ours.close()
            _serve(theirs, work, warm, memory_mb)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    theirs.close()
    with contextlib.suppress(PermissionError, ProcessLookupError):
        os.setpgid(pid, pid)  # also done by the runner: whichever runs first, the group exists before a kill
    return _Runner(pid, ours, key, owner)


_BOOT = "import sys; sys.path[:] = sys.argv[4:]; import importlib; importlib.import_module(sys.argv[1]).main()"


def _spawn(spawn: Spawn, *, setup: bool = True) -> _Runner:
    """Start a runner as a fresh interpreter (``python -c BOOT MODULE FD PARENT PATH...``).

    Its setup is sent at once, or (``setup=False``: an interpreter started
    ahead) when a function takes it.
    """
    import subprocess

    ours, theirs = socket.socketpair()
    output = wire.output_file()
    stdout = subprocess.DEVNULL if output is None else output
    try:
        argv = [sys.executable, "-I", "-S", "-c", _BOOT, spawn.module, str(theirs.fileno()), str(os.getpid()),
                *spawn.path]
        # An empty environment and close_fds: the runner gets its socket, /dev/null as stdin and its
        # output file as stdout and stderr, nothing else of the worker's.
        child = subprocess.Popen(argv, env={}, close_fds=True, pass_fds=(theirs.fileno(),),
                                 stdin=subprocess.DEVNULL, stdout=stdout, stderr=stdout,
                                 process_group=0)
    except BaseException:
        if output is not None:
            os.close(output)
        raise
    finally:
        theirs.close()
    cpus.free(child.pid)  # (started by a thread kept on one CPU, it would run only there)
    # The pool reaps its runners itself (os.wait4, for their peak memory): the Popen object must
    # neither reap it nor warn about it when it goes.
    child.returncode = 0
    runner = _Runner(child.pid, ours, None, None, output=output)
    if setup:
        with contextlib.suppress(OSError):  # if it died at once, it is reported as a crash
            wire.send(ours, _setup_message(spawn))
    return runner


def _setup_message(spawn: Spawn) -> bytes:
    return pickle.dumps({"env": spawn.env, "cwd": spawn.cwd, "setup": spawn.setup})


def _serve(sock: socket.socket, work: Work, warm: Callable[[], None] | None, memory_mb: int) -> None:
    """A forked runner's life: let go of what it inherited from the worker, then :func:`serve`."""
    os.setpgid(0, 0)
    _forget_inherited_runners()
    detach_inherited_pipes_and_sockets(keep=sock.fileno())
    serve(sock, work, warm, memory_mb)


def _forget_inherited_runners() -> None:
    # A runner is a fork of the worker: close its copies of its siblings' sockets,
    # which would otherwise keep them open after the worker closes them.
    _pool._forget_if_forked()


class _PlainData(pickle.Unpickler):
    """Reads plain data only (dicts, lists, text, numbers...): no class or function is ever looked up."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"{module}.{name} is not plain data")


def _decoded(reply: bytes, *, plain: bool) -> dict[str, Any] | None:
    """A runner's reply. A spawned runner's (a deployed function's: the function's code shares its process, and
    may write to its socket) is read as plain data only, never as objects the worker would build (a pickle
    names any function to call); None if it is not a reply."""
    try:
        payload = _PlainData(io.BytesIO(reply)).load() if plain else pickle.loads(reply)
    except Exception:
        return None
    return payload if isinstance(payload, dict) and "ok" in payload else None


def not_run(why: str) -> ChildResult:
    """The result of a chained step that never started, and ``why``."""
    return ChildResult(False, error_type="NotRun", error=f"not run: {why}", not_run=True)


def _how_it_died(status: int | None) -> str:
    if status is None:
        return "exited"
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with status {os.WEXITSTATUS(status)}"


# --- this process's pool -------------------------------------------------------------------

_pool = RunnerPool()


def pool() -> RunnerPool:
    """The warm runners of this worker process."""
    return _pool


def warm_hook(handler: Callable[..., Any]) -> Callable[[], None] | None:
    """The ``warm()`` function of ``handler``'s module, if it has one: called once in each new runner.

    Example (in a function's module)::

        def warm() -> None:
            from PIL import Image
            Image.init()   # load every image plugin before the first event, not during it
    """
    module = sys.modules.get(getattr(handler, "__module__", "") or "")
    hook = getattr(module, "warm", None)
    return hook if callable(hook) else None


def share_memory_with_pool() -> None:
    """Keep the pages a worker's pool processes inherit shared: freeze the heap just before each is forked.

    A forked process shares its parent's pages until it writes one; Python's
    cycle collector writes to every object it scans, so a pool process's
    first collection used to copy most of the worker's heap (20-40 MB each).
    Objects frozen before the fork (``gc.freeze``) are never scanned again.
    Runners forked from a pool process inherit the same shared pages.
    """
    import gc

    from celery.signals import worker_before_create_process

    def freeze(**_: Any) -> None:
        gc.collect()
        gc.freeze()

    worker_before_create_process.connect(freeze, weak=False)


os.register_at_fork(after_in_child=_pool._after_fork_in_child)

__all__ = ["IDLE_SECONDS", "MAX_IDLE", "PROVISIONED", "WARM", "Retire", "RunnerPool", "Running", "Spawn", "not_run",
           "pool", "share_memory_with_pool", "warm_hook"]
