"""``fileproc serve``: the whole service in one process tree, for one machine.

The embedded broker (a redis-server child), the HTTP API (in this process),
one supervised ``fileproc worker`` child, the folder watcher and the
catch-up scan for local buckets, and the reconciler (every watched bucket
listed on an interval, for objects whose notification was lost). Ctrl-C or SIGTERM stops the API, lets the
worker finish what it is running (its unfinished messages go back to the
queue), and shuts the broker down with its data saved.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gc
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import IO, Any

import uvicorn

from fileproc.broker import EmbeddedBroker
from fileproc.config import Settings
from fileproc.errors import FileprocError
from fileproc.intake.reconcile import Reconciler
from fileproc.intake.watcher import WatcherSource
from fileproc.processes import die_with_parent, spawn
from fileproc.runtime.app import configure, embedded_socket
from fileproc.service import Service
from fileproc.tokens import load_tokens
from fileproc.web import create_app

log = logging.getLogger(__name__)


class SupervisedWorker:
    """A ``fileproc worker`` child, restarted if it dies (say, killed).

    With ``fork_first`` its first start is a fork of this process (see
    :func:`fork_worker`) instead of a new interpreter; a restart is always
    a new interpreter (by then this process runs threads: no fork).
    """

    def __init__(self, argv: list[str], *, fork_first: bool = False, keep: Sequence[IO[Any] | socket.socket] = ()
                 ) -> None:
        self.argv, self.fork_first, self.keep = argv, fork_first, keep
        self.process: subprocess.Popen[bytes] | Forked | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="fileproc-worker-supervisor", daemon=True)

    def start(self) -> None:
        self.process = fork_worker(self.argv, self.keep) if self.fork_first else spawn(self.argv)
        self._thread.start()

    def _watch(self) -> None:
        delay = 1.0
        while not self._stopping.is_set():
            assert self.process is not None
            code = self.process.wait()
            if self._stopping.is_set():
                return
            log.warning("the worker exited (status %s); restarting it in %.0f s", code, delay)
            if self._stopping.wait(delay):
                return
            delay = min(delay * 2, 30.0)
            self.process = spawn(self.argv)

    def stop(self, timeout: float = 60.0) -> None:
        self._stopping.set()
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)  # Celery's warm shutdown
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("the worker did not stop in %.0f s; killing it (its steps will run again)", timeout)
            self.process.kill()
            self.process.wait()


class Forked:
    """A forked child, waited for as a ``subprocess.Popen`` is (``wait``, ``poll``, ``send_signal``, ``kill``)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._lock = threading.Lock()
        self._exited = os.pidfd_open(pid)  # readable once it exits: waited for without polling

    def poll(self) -> int | None:
        with self._lock:
            if self.returncode is None:
                done, status = os.waitpid(self.pid, os.WNOHANG)
                if done:
                    self.returncode = os.waitstatus_to_exitcode(status)
                    os.close(self._exited)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(["fileproc", "worker"], timeout or 0)
            with contextlib.suppress(OSError, ValueError):  # (closed by a poll in another thread: it exited)
                select.select([self._exited], [], [], left)
        return code

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def fork_worker(argv: list[str], keep: Sequence[IO[Any] | socket.socket] = ()) -> Forked:
    """Start ``fileproc worker`` (``argv``) as a fork of this process, which has imported what it needs.

    A new interpreter would import SQLAlchemy, pydantic, Celery, Redis's
    client... again, about 70 MB of its own; a fork shares this process's
    pages until one side writes them, and the heap is frozen first
    (``gc.freeze``) so the collector does not write them all. Call it
    before this process starts any thread. The child closes what ``keep``
    names (the API's socket, the data dir's lock), shows ``argv`` as its
    command line, and dies with this process, as a spawned one does.
    """
    gc.collect()
    gc.freeze()
    pid = os.fork()
    if pid == 0:  # the worker
        code = 1
        try:
            os.setsid()
            die_with_parent(signal.SIGTERM)
            for handle in keep:
                handle.close()
            show_as(argv)
            sys.argv = [argv[0], *argv[3:]]  # as `python -m fileproc ...` sets it
            import runpy

            runpy.run_module("fileproc", run_name="__main__")
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            log.exception("the worker failed")
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)
    return Forked(pid)


def show_as(argv: list[str]) -> None:
    """Make what ``ps`` shows of this forked process read ``argv`` (a fork keeps its parent's command line)."""
    import setproctitle

    setproctitle.setproctitle(" ".join([os.path.basename(argv[0]), *argv[1:]]))


def watch_local_buckets(service: Service) -> WatcherSource:
    """Feed files dropped into bucket folders (and those already there) to dispatch."""
    source = WatcherSource(service.settings.buckets_dir, service.storage,
                           service.submit,
                           settle_seconds=service.settings.watcher.settle_seconds)
    source.start()
    return source


def lock_data_dir(settings: Settings) -> IO[str]:
    """Hold a lock on the data dir for as long as this process lives: one serve per data dir."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    handle = open(settings.data_dir / "serve.lock", "w")  # noqa: SIM115  (held until exit)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise FileprocError(f"another `fileproc serve` is already using {settings.data_dir}") from None
    return handle


def bind_api(host: str, port: int) -> socket.socket:
    """The API's listening socket, bound before anything starts: a port in use is said at once.

    uvicorn would only find out after "serving on" was logged and the broker
    and worker had started.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: restart without waiting
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        hint = "; another program uses it (choose one with --port)" if exc.errno == errno.EADDRINUSE else ""
        raise FileprocError(f"cannot listen on {host}:{port}: {exc.strerror or exc}{hint}") from exc
    return sock


def serve(service: Service, host: str, port: int, config_argv: list[str]) -> None:
    settings = service.settings
    lock = lock_data_dir(settings)
    try:
        listener = bind_api(host, port)
    except FileprocError:
        lock.close()
        raise
    port = listener.getsockname()[1]
    broker = None
    if settings.embedded_broker:
        broker = EmbeddedBroker(settings.data_dir / "broker", embedded_socket(settings))
        broker.start()
        # Its password is made as it first starts: this process's sends (the watcher's, the
        # webhook's) must use it too, not the address the service was built with before.
        configure(settings)
    service.prepare_buckets()
    # Its steps run at once in threads, not in a process each: on one machine the memory of two more
    # interpreters (about 35 MB each) buys nothing, as every step runs in its function's runner anyway.
    # Forked from this process before it starts any thread (sharing its imports' pages).
    worker = SupervisedWorker([sys.executable, "-m", "fileproc", *config_argv, "worker", "--pool", "threads"],
                              fork_first=True, keep=(listener, lock))
    watcher = None
    reconciler = None
    try:
        worker.start()
        if settings.storage.backend == "local" and settings.watcher.enabled:
            watcher = watch_local_buckets(service)
        if settings.reconcile.enabled:
            reconciler = Reconciler(service).start()
        tokens = load_tokens(settings)
        log.info("tokens are in %s (or set api.webhook_token / api.admin_token)", settings.data_dir / "tokens.json")
        app = create_app(service, tokens)
        server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, access_log=False,
                                               log_level=settings.log_level.lower(), lifespan="on"))
        log.info("fileproc serving on http://%s:%d (data in %s)", host, port, settings.data_dir.resolve())
        log.info("dashboard: http://%s:%d/ui (log in with the admin token)", host, port)
        # uvicorn handles SIGINT/SIGTERM, then re-raises them once it has stopped; with
        # the default handlers that would kill this process before the cleanup below.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: None)
        server.run(sockets=[listener])
        if not server.started:
            raise FileprocError(f"could not listen on {host}:{port} (in use, or not an address of this machine)")
    finally:
        if reconciler is not None:
            reconciler.stop()
        if watcher is not None:
            watcher.stop()
        worker.stop()
        if broker is not None:
            broker.stop()
        listener.close()
        lock.close()
        log.info("fileproc stopped")


__all__ = ["SupervisedWorker", "serve", "watch_local_buckets"]
