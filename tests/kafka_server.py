"""A real Apache Kafka broker for tests: one KRaft node (broker and controller) on loopback.

Kafka's jars come from ``$FILEPROC_KAFKA_LIBS`` (``.ci/kafka.sh`` puts them
in the CI cache); a developer without them sees the Kafka tests skipped, CI
sees them fail. The broker keeps its data in a fresh temporary directory and
can be stopped and started again on the same ports and data, for tests of a
broker restarted mid-stream::

    with kafka_server(partitions=3) as kafka:
        kafka.create_topic("clicks", partitions=3)
        source = f"kafka://{kafka.bootstrap}/clicks"
        kafka.stop()          # SIGTERM: a clean shutdown (kill=True: SIGKILL)
        kafka.start()         # same ports, same data

Or as a fixture: ``kafka_broker`` (one broker per test module).

Startup: the storage is formatted once (``StorageTool format --standalone``,
~0.8 s) and the broker answers ~2 s after it starts, on a small heap. The
first broker that stops cleanly leaves a class-data-sharing archive of the
classes it loaded beside the jars (``FILEPROC_KAFKA_LIBS/../broker.jsa``):
later brokers start from it, twice as fast on a busy machine (6 s -> 2.7 s).
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers import _can_connect, _stop, _wait_until, free_port, require, unavailable

JVM_OPTIONS = ["-Xms64m", "-Xmx256m", "-XX:+UseSerialGC", "-XX:MaxDirectMemorySize=64m", "-Djava.awt.headless=true"]
"""A small heap and the serial collector: two shared cores, and a test's traffic is small."""

CLEAN_EXITS = (0, 143)
"""A JVM's exit status after its shutdown ran (143: after SIGTERM)."""

# Warnings and errors only, to the broker's log file (tests show its tail when it fails to start).
LOG4J2 = """\
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.out.ref = out
"""


def kafka_libs() -> Path:
    """The directory of Kafka's jars: ``$FILEPROC_KAFKA_LIBS``; skip the test without it (fail it under CI)."""
    libs = os.environ.get("FILEPROC_KAFKA_LIBS")
    if not libs:
        unavailable("FILEPROC_KAFKA_LIBS is not set (source .ci/kafka.sh: it installs Kafka's jars)")
    path = Path(libs)
    if not any(path.glob("kafka_2.13-*.jar")):
        unavailable(f"no Kafka jars in FILEPROC_KAFKA_LIBS={libs} (run .ci/kafka.sh)")
    return path


def _owned() -> None:
    # Its own session (stop() signals the whole group), and killed if pytest dies without a teardown.
    os.setsid()
    from fileproc.processes import die_with_parent

    die_with_parent(signal.SIGKILL)


class KafkaBroker:
    """A single-node KRaft broker on 127.0.0.1: ``bootstrap`` is ``127.0.0.1:PORT``."""

    def __init__(self, libs: Path, directory: Path, partitions: int = 1,
                 settings: dict[str, str] | None = None) -> None:
        self.libs = libs
        self.java = require("java")
        self.directory = directory
        self.port = free_port()
        self.controller_port = free_port()
        self.log = directory / "broker.log"
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.started_in = 0.0  # seconds the last start() took, until the broker answered
        self._proc: subprocess.Popen[bytes] | None = None
        self._dumping: Path | None = None  # the class archive this run writes as it exits
        self._write_config(partitions, settings or {})
        self._format()

    def _write_config(self, partitions: int, extra: dict[str, str]) -> None:
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.directory / "data"),
            "num.partitions": str(partitions),  # of a topic created by its first use
            # One node: every internal topic has one replica, and one partition (a group's coordinator loads at once).
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.num.partitions": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.num.partitions": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            # KIP-848 groups: a member learns of a rebalance on its next heartbeat (default 5 s), and a
            # member that vanished is dropped after the session timeout (default 45 s): short, for tests.
            "group.consumer.min.heartbeat.interval.ms": "250",
            "group.consumer.heartbeat.interval.ms": "250",
            "group.consumer.min.session.timeout.ms": "3000",
            "group.consumer.session.timeout.ms": "6000",
            "group.classic.min.session.timeout.ms": "3000",
            # Fewer threads: two cores are shared by the whole test run.
            "num.network.threads": "2",
            "num.io.threads": "2",
            "background.threads": "2",
            "num.recovery.threads.per.data.dir": "1",
            "log.cleaner.threads": "1",
            **extra,
        }
        (self.directory / "server.properties").write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
        (self.directory / "log4j2.properties").write_text(LOG4J2)

    def _java(self, main: str, *args: str) -> list[str]:
        return [self.java, *JVM_OPTIONS, f"-XX:ErrorFile={self.directory / 'hs_err_%p.log'}",
                f"-Dlog4j2.configurationFile={self.directory / 'log4j2.properties'}",
                "-cp", f"{self.libs}/*", main, *args]

    def _format(self) -> None:
        """Format the log directory as a one-node cluster whose only controller is this node."""
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        # --cluster-id=ID: an id may start with "-"; C1 only: the tool runs for a second, never hot.
        command = self._java("kafka.tools.StorageTool", "format", "--standalone", f"--cluster-id={cluster_id}",
                             "--config", str(self.directory / "server.properties"))
        command.insert(1, "-XX:TieredStopAtLevel=1")
        done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"kafka-storage format failed ({done.returncode}):\n"
                               f"{done.stdout.decode(errors='replace')}{done.stderr.decode(errors='replace')}")

    def start(self) -> None:
        """Start the broker (again) on its ports and data; returns once it answers clients."""
        if self._proc is not None and self._proc.poll() is None:
            return
        began = time.monotonic()
        archive = self._class_archive()
        try:
            self._launch(archive)
        except RuntimeError:
            if not any(option.startswith("-XX:SharedArchiveFile") for option in archive):
                raise
            self._drop_archive()  # one the JVM cannot map (it dies on a damaged one): start without it
            self._launch([])
        self.started_in = time.monotonic() - began

    def _launch(self, options: list[str]) -> None:
        command = self._java("kafka.Kafka", str(self.directory / "server.properties"))
        command[1:1] = options
        logged = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self._proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                          preexec_fn=_owned)
        try:
            _wait_until(lambda: _can_connect(self.port) and self._answers(), self._proc, "kafka", self.log)
        except RuntimeError:
            self.stop(kill=True)
            raise
        with self.log.open("rb") as out:  # ignored (another Java, other jars): the next clean stop makes one
            out.seek(logged)
            if b"Unable to use shared archive" in out.read(4096):
                self._drop_archive()

    def stop(self, kill: bool = False) -> None:
        """Stop the broker: SIGTERM (a clean shutdown, ~0.5 s), or with ``kill`` SIGKILL (a crash)."""
        if self._proc is not None:
            _stop(self._proc, signal.SIGKILL if kill else signal.SIGTERM)
        dumped, self._dumping = self._dumping, None
        if dumped is None:
            return
        # The JVM writes the archive as it exits: keep it only from a JVM that exited by itself.
        exited = self._proc is not None and self._proc.returncode in CLEAN_EXITS
        with contextlib.suppress(OSError):
            if exited and dumped.stat().st_size > 0:
                os.replace(dumped, self.libs.parent / "broker.jsa")
        with contextlib.suppress(OSError):
            dumped.unlink()

    def _class_archive(self) -> list[str]:
        """The JVM options that start the broker from the shared class archive, or make one as it exits."""
        archive = self.libs.parent / "broker.jsa"
        if archive.exists():
            return [f"-XX:SharedArchiveFile={archive}"]
        if not os.access(archive.parent, os.W_OK):
            return []
        # Written beside it under a name of its own, then renamed: concurrent runs never see half a file.
        self._dumping = archive.parent / f"broker.jsa.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial"
        return [f"-XX:ArchiveClassesAtExit={self._dumping}"]

    def _drop_archive(self) -> None:
        with contextlib.suppress(OSError):
            (self.libs.parent / "broker.jsa").unlink()

    def _answers(self) -> bool:
        """Whether the broker serves metadata naming itself (it accepts connections a little before)."""
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(self._client_config())
        try:
            return bool(admin.list_topics(timeout=1).brokers)
        except Exception:  # not ready yet, whatever the client says
            return False

    def _client_config(self) -> dict[str, Any]:
        return {"bootstrap.servers": self.bootstrap, "logger": _QUIET}

    def create_topic(self, name: str, partitions: int = 1) -> None:
        """Create ``name`` with ``partitions`` partitions (one replica) and wait until it is there."""
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient(self._client_config())
        for future in admin.create_topics([NewTopic(name, partitions, 1)], operation_timeout=10).values():
            future.result(timeout=15)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the metadata of a new topic reaches the broker a moment later
            topic = admin.list_topics(name, timeout=5).topics.get(name)
            if topic is not None and topic.error is None and len(topic.partitions) == partitions:
                return
            time.sleep(0.05)
        raise RuntimeError(f"topic {name} not ready after 10 s")


_QUIET = logging.getLogger("tests.kafka_server.client")
"""librdkafka's own log (connection refused while the broker starts) goes here, not to stderr."""


@contextlib.contextmanager
def kafka_server(partitions: int = 1, settings: dict[str, str] | None = None) -> Iterator[KafkaBroker]:
    """A throwaway single-node Kafka.

    ``partitions``: of a topic created by its first use (``create_topic`` chooses per topic);
    ``settings``: more (or other) lines of its server.properties.
    """
    libs = kafka_libs()
    with tempfile.TemporaryDirectory(prefix="fileproc-kafka-") as tmp:
        broker = KafkaBroker(libs, Path(tmp), partitions, settings)
        try:
            broker.start()
            yield broker
        finally:
            broker.stop()


@pytest.fixture(scope="module")
def kafka_broker() -> Iterator[KafkaBroker]:
    """One broker for a test module (each test uses topics of its own)."""
    with kafka_server() as broker:
        yield broker
