"""A real NATS server with JetStream on loopback, for the NATS stream tests; restartable mid-test.

::

    with nats_server() as nats:          # nats.url == "nats://127.0.0.1:PORT"
        ...
        nats.stop()                      # e.g. mid-stream: clients see it go away
        nats.start()                     # the same port and store directory: the streams are still there

The binary is ``$FILEPROC_NATS_SERVER`` (``.ci/nats.sh`` builds it), else
``nats-server`` on PATH or in ~/go/bin; without it the test is skipped on a
developer machine and fails under CI (``servers.require``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.servers import _stop, _tail, _wait_until, free_port, require


def nats_server_binary() -> str:
    """nats-server: $FILEPROC_NATS_SERVER, PATH, or ~/go/bin; skip/fail without."""
    explicit = os.environ.get("FILEPROC_NATS_SERVER")
    if explicit:
        return require("nats-server", explicit)
    if shutil.which("nats-server"):
        return require("nats-server")
    return require("nats-server", str(Path.home() / "go" / "bin" / "nats-server"))


def _answers(port: int) -> bool:
    """The server greets a client with its INFO line once it takes connections (JetStream is up by then)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            return sock.recv(5) == b"INFO "
    except OSError:
        return False


class NatsServer:
    """One nats-server with JetStream: its port and store directory outlive ``stop()``."""

    def __init__(self, binary: str, store: Path, log: Path) -> None:
        self.binary, self.store, self.log = binary, store, log
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``nats://127.0.0.1:PORT`` (a stream source adds ``/SUBJECT``)."""
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start it: on a free port the first time, on the same port (and store) after ``stop``."""
        if self._proc is not None and self._proc.poll() is None:
            return
        # A free port can be taken before the server binds it: retry a fresh one, but only the first time.
        attempts = 1 if self.port else 3
        for attempt in range(attempts):
            port = self.port or free_port()
            with self.log.open("ab") as out:
                # A new session, so _stop signals the server alone, never the test run.
                proc = subprocess.Popen([self.binary, "-js", "-a", "127.0.0.1", "-p", str(port),
                                         "-sd", str(self.store)],
                                        stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                        start_new_session=True)
            try:
                _wait_until(functools.partial(_answers, port), proc, "nats-server", self.log)
            except RuntimeError:
                exited = proc.poll() is not None
                _stop(proc)
                if attempt == attempts - 1 or not exited:
                    raise
                continue
            self._proc, self.port = proc, port
            return

    def stop(self) -> None:
        """Stop it (SIGTERM: it writes its streams' and consumers' state, as a server shut down by hand does)."""
        if self._proc is not None:
            _stop(self._proc)
            self._proc = None

    def tail(self) -> str:
        """The last lines of its log (for a failing test's message)."""
        return _tail(self.log)


@contextlib.contextmanager
def nats_server() -> Iterator[NatsServer]:
    """A throwaway nats-server with JetStream on 127.0.0.1, its store in a fresh temporary directory."""
    binary = nats_server_binary()
    with tempfile.TemporaryDirectory(prefix="fileproc-nats-") as tmp:
        server = NatsServer(binary, Path(tmp) / "store", Path(tmp) / "nats.log")
        server.start()
        try:
            yield server
        finally:
            server.stop()
