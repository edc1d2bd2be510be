"""A real RabbitMQ for tests: one throwaway node on loopback, restartable mid-test.

::

    with rabbitmq_server() as rabbit:    # rabbit.url == "amqp://fileproc:PASSWORD@127.0.0.1:PORT/"
        source = f"{rabbit.url}%2F/QUEUE"
        rabbit.stop()                    # SIGTERM: a clean shutdown (durable queues, persistent messages kept)
        rabbit.start()                   # the same ports, node and data

The node is Debian's ``rabbitmq-server`` (``apt-get install rabbitmq-server``;
.ci/run installs it), run as the calling user from
``/usr/lib/rabbitmq/bin`` (``/usr/sbin``'s wrapper would switch to the
``rabbitmq`` user), with everything of its own: a unique node name, the AMQP
port, the Erlang distribution port and an ``epmd`` on free ports of
127.0.0.1, its database and logs in a temporary directory, a random Erlang
cookie in a temporary HOME, no plugins (no management UI), and a user with a
random password instead of ``guest`` (``default_user``: made at the first
boot, so no ``rabbitmqctl`` run, ~1.5 s each, is needed). Without the
binary the test is skipped on a developer machine and fails under CI
(``servers.require``).

Startup: ~4 s here until AMQP answers (the first boot, which makes the
database, and a restart alike); a clean stop ~1 s.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from tests.servers import _stop, _tail, _wait_until, free_port, require

USER = "fileproc"
SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
"""Debian's script that runs the node as the calling user (PATH's rabbitmq-server elsewhere)."""


def _owned() -> None:
    # Its own session (stop() signals the whole group); SIGTERM if pytest dies without a teardown,
    # which the server script turns into a clean stop of the Erlang VM.
    os.setsid()
    from fileproc.processes import die_with_parent

    die_with_parent(signal.SIGTERM)


class RabbitMQ:
    """One RabbitMQ node: its ports, name and data outlive ``stop()``."""

    def __init__(self, binary: str, epmd: str, directory: Path) -> None:
        self.binary, self.epmd, self.directory = binary, epmd, directory
        self.password = secrets.token_hex(12)
        self.node = f"fileproc-{uuid.uuid4().hex[:10]}@localhost"
        self.port, self.dist_port, self.epmd_port = free_port(), free_port(), free_port()
        self.log = directory / "rabbitmq.log"
        self.started_in = 0.0  # seconds the last start() took, until AMQP answered
        self._proc: subprocess.Popen[bytes] | None = None
        self._epmd: subprocess.Popen[bytes] | None = None
        self._configure()

    @property
    def url(self) -> str:
        """``amqp://fileproc:PASSWORD@127.0.0.1:PORT/`` (a stream source adds ``VHOST/QUEUE``)."""
        return f"amqp://{USER}:{self.password}@127.0.0.1:{self.port}/"

    def _configure(self) -> None:
        home = self.directory / "home"
        home.mkdir()
        cookie = home / ".erlang.cookie"  # only this node and the tools run with this HOME know it
        cookie.write_text(secrets.token_hex(20))
        cookie.chmod(0o400)
        (self.directory / "enabled_plugins").write_text("[].\n")
        (self.directory / "rabbitmq-env.conf").write_text("")  # not /etc/rabbitmq's
        (self.directory / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.port}\n"
            f"default_user = {USER}\ndefault_pass = {self.password}\n"
            "log.console = true\nlog.console.level = warning\nlog.file = false\n")

    def _environment(self) -> dict[str, str]:
        tmp = self.directory
        return {**os.environ, "HOME": str(tmp / "home"),
                "RABBITMQ_NODENAME": self.node, "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
                "RABBITMQ_NODE_PORT": str(self.port), "RABBITMQ_DIST_PORT": str(self.dist_port),
                "ERL_EPMD_PORT": str(self.epmd_port), "ERL_EPMD_ADDRESS": "127.0.0.1",
                "RABBITMQ_MNESIA_BASE": str(tmp / "mnesia"), "RABBITMQ_LOG_BASE": str(tmp / "log"),
                "RABBITMQ_CONFIG_FILE": str(tmp / "rabbitmq.conf"),
                "RABBITMQ_CONF_ENV_FILE": str(tmp / "rabbitmq-env.conf"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(tmp / "enabled_plugins"),
                "RABBITMQ_PID_FILE": str(tmp / "rabbitmq.pid"),
                # The distribution port on loopback too (AMQP's is in the config, epmd's above).
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}"}

    def start(self) -> None:
        """Start the node (again); returns once a client can log in over AMQP."""
        if self._proc is not None and self._proc.poll() is None:
            return
        began = time.monotonic()
        env = self._environment()
        if self._epmd is None or self._epmd.poll() is not None:
            # Its own epmd, on its own port: the node registers there, and it goes with the node.
            self._epmd = subprocess.Popen([self.epmd, "-port", str(self.epmd_port)], env=env,
                                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL, preexec_fn=_owned)
        with self.log.open("ab") as out:
            self._proc = subprocess.Popen([self.binary], env=env, cwd=self.directory, stdin=subprocess.DEVNULL,
                                          stdout=out, stderr=subprocess.STDOUT, preexec_fn=_owned)
        try:
            _wait_until(self._answers, self._proc, "rabbitmq-server", self.log)
        except RuntimeError:
            self.stop()
            raise
        self.started_in = time.monotonic() - began

    def _answers(self) -> bool:
        import amqp  # (kombu's AMQP client)

        client = amqp.Connection(f"127.0.0.1:{self.port}", userid=USER, password=self.password, connect_timeout=1)
        try:
            client.connect()
        except (OSError, amqp.exceptions.AMQPError):
            return False
        with contextlib.suppress(OSError, amqp.exceptions.AMQPError):
            client.close()
        return True

    def stop(self) -> None:
        """Stop the node (SIGTERM: RabbitMQ's clean shutdown, ~1 s; its clients see their connections close)."""
        if self._proc is not None:
            _stop(self._proc)
            self._proc = None

    def close(self) -> None:
        """Stop the node and its epmd."""
        self.stop()
        if self._epmd is not None:
            _stop(self._epmd)
            self._epmd = None

    def tail(self) -> str:
        """The last lines of its log (for a failing test's message)."""
        return _tail(self.log)


def rabbitmq_binary() -> str:
    """rabbitmq-server: Debian's own script, else PATH; skip/fail without (.ci/run installs it)."""
    return require("rabbitmq-server", SERVER) if os.access(SERVER, os.X_OK) else require("rabbitmq-server")


@contextlib.contextmanager
def rabbitmq_server() -> Iterator[RabbitMQ]:
    """A throwaway RabbitMQ node on 127.0.0.1 (see the module's docstring); stopped at the end."""
    binary, epmd = rabbitmq_binary(), require("epmd")
    with tempfile.TemporaryDirectory(prefix="fileproc-rabbitmq-") as tmp:
        server = RabbitMQ(binary, epmd, Path(tmp))
        try:
            server.start()
            yield server
        finally:
            server.close()
