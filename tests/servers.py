"""Real servers for tests: Redis, PostgreSQL and versitygw on loopback.

Each helper is a context manager that starts one server on a free port of
127.0.0.1 with its data in a fresh temporary directory, waits (bounded) until
it accepts connections, yields how to reach it, and stops it at exit::

    with redis_server() as url:          # "redis://127.0.0.1:PORT/0"
        ...
    with postgres_server() as url:       # "postgresql+psycopg://postgres@127.0.0.1:PORT/fileproc"
        ...
    with versitygw_server(webhook_url=None) as gw:
        Minio(gw.endpoint, gw.access_key, gw.secret_key, secure=False)

A test that needs a binary calls :func:`require` first: a developer without
the binary sees the test skipped, CI (``CI=true``) sees it fail, so a green
CI run always means every test really ran.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from ipaddress import ip_network
from pathlib import Path
from typing import Any, NoReturn

import pytest

START_TIMEOUT = 30.0
"""Seconds a server gets to accept connections before the helper gives up."""


def require(binary: str, path: str | None = None) -> str:
    """The path of ``binary``; skip the test without it (fail it under CI).

    ``path`` is an explicit location to use instead of a PATH lookup (for
    binaries found through an environment variable).
    """
    found = path if path and os.access(path, os.X_OK) else shutil.which(binary)
    if found:
        return found
    looked = f"{path} or PATH" if path else "PATH"
    unavailable(f"{binary} not found in {looked} (install it, or see .ci/run for how CI gets it)")


def unavailable(reason: str) -> NoReturn:
    """Skip the test for want of ``reason`` on a developer machine; fail it under CI, which must run every test."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI must run every test", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- starting and stopping a process -------------------------------------------------


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no output)"
    return "\n".join(text.splitlines()[-lines:]) or "(no output)"


def _can_connect(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _wait_until(ready: Callable[[], bool], proc: subprocess.Popen[bytes] | None, what: str, log: Path) -> None:
    """Poll ``ready`` until it is true; raise with the server's log tail otherwise."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode} while starting:\n{_tail(log)}")
        if ready():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not accept connections within {START_TIMEOUT:.0f}s:\n{_tail(log)}")


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Stop a server (its whole process group) with ``sig``, then SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@contextlib.contextmanager
def _serve(what: str, command: Callable[[int], Sequence[str]], log: Path,
           ready: Callable[[int], bool] = _can_connect, stop_signal: int = signal.SIGTERM,
           port: int | None = None) -> Iterator[int]:
    """Run ``command(port)`` on ``port`` (default: a free one) until the block ends; yield the port.

    A free port is free when chosen but another process may take it before
    the server binds it, so a server that dies while starting is retried on a
    fresh port a couple of times before giving up (not with a given port).
    """
    attempts = 1 if port is not None else 3
    for attempt in range(attempts):
        chosen = port if port is not None else free_port()
        with log.open("ab") as out:
            # A new session, so _stop can signal the server and any children it forks.
            proc = subprocess.Popen(command(chosen), stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait_until(functools.partial(ready, chosen), proc, what, log)
        except RuntimeError:
            exited_by_itself = proc.poll() is not None
            _stop(proc)
            if attempt == attempts - 1 or not exited_by_itself:
                raise
            continue
        try:
            yield chosen
        finally:
            _stop(proc, stop_signal)
        return


# --- Redis -----------------------------------------------------------------------------


REDIS_PASSWORD = "fileproc-test-broker"
"""Every test Redis asks for a password, as the README asks of a production one."""


def _redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(f"AUTH {REDIS_PASSWORD}\r\nPING\r\n".encode())
            return b"+PONG" in sock.recv(64)
    except OSError:
        return False


@contextlib.contextmanager
def redis_server(also_listen: Sequence[str] = ()) -> Iterator[str]:
    """A throwaway Redis without persistence, with a password; yields ``redis://:PASSWORD@127.0.0.1:PORT/0``.

    ``also_listen``: more local addresses to listen on, same port (tests/netns.py's hosts).
    """
    binary = require("redis-server")
    with tempfile.TemporaryDirectory(prefix="fileproc-redis-") as tmp:
        def command(port: int) -> list[str]:
            # Protected mode refuses clients from other addresses than loopback: the simulated hosts'.
            unprotected = ["--protected-mode", "no"] if also_listen else []
            return [binary, "--port", str(port), "--bind", "127.0.0.1", *also_listen, *unprotected, "--save", "",
                    "--appendonly", "no", "--dir", tmp, "--daemonize", "no", "--requirepass", REDIS_PASSWORD]

        with _serve("redis-server", command, Path(tmp) / "redis.log", ready=_redis_answers) as port:
            yield f"redis://:{REDIS_PASSWORD}@127.0.0.1:{port}/0"


# --- PostgreSQL ------------------------------------------------------------------------


def _postgres_bin() -> Path | None:
    """The directory of the newest PostgreSQL server binaries (Debian's layout, else PATH)."""
    def major(initdb: Path) -> int:
        name = initdb.parent.parent.name
        return int(name) if name.isdigit() else 0

    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=major)
    if versions:
        return versions[-1].parent
    on_path = shutil.which("initdb")
    # Resolved: a symlinked initdb's siblings (pg_isready, createdb) live beside its target.
    return Path(on_path).resolve().parent if on_path else None


def _as_postgres_user() -> list[str]:
    """PostgreSQL refuses to run as root; run it as the ``postgres`` user then."""
    if os.geteuid() != 0:
        return []
    return [require("runuser"), "-u", "postgres", "--"]


@contextlib.contextmanager
def postgres_server(also_listen: Sequence[str] = ()) -> Iterator[str]:
    """A throwaway PostgreSQL cluster; yields a SQLAlchemy URL of an empty database.

    ``also_listen``: more local addresses to listen on, same port (tests/netns.py's hosts);
    clients in each one's /24 are trusted too.

    Trust authentication on loopback, no fsync (speed over durability: the
    data dies with the test run anyway).
    """
    bindir = _postgres_bin()
    require("initdb", str(bindir / "initdb") if bindir else None)
    assert bindir is not None
    runas = _as_postgres_user()
    # Not under pytest's tmp_path: its parents are root-only (0700) and the
    # postgres user must be able to reach its own directory.
    tmp = Path(tempfile.mkdtemp(prefix="fileproc-pg-"))
    try:
        data, sockets, log = tmp / "data", tmp / "sock", tmp / "postgres.log"
        sockets.mkdir()
        log.touch()
        if runas:
            shutil.chown(tmp, "postgres")
            shutil.chown(sockets, "postgres")
            shutil.chown(log, "postgres")
        subprocess.run([*runas, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                        "--encoding=UTF8", "--locale=C"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        with (data / "pg_hba.conf").open("a") as hba:  # the simulated hosts are in the address's /24
            for address in also_listen:
                hba.write(f"host all all {ip_network(f'{address}/24', strict=False)} trust\n")

        def command(port: int) -> list[str]:
            # Run the postmaster itself (not pg_ctl) so _serve owns the process.
            return [*runas, str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(sockets),
                    "-c", "listen_addresses=" + ",".join(["127.0.0.1", *also_listen]), "-c", "fsync=off",
                    "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]

        def ready(port: int) -> bool:
            probe = subprocess.run([str(bindir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port)],
                                   check=False, stdin=subprocess.DEVNULL)
            return probe.returncode == 0

        # SIGINT is PostgreSQL's "fast" shutdown: it does not wait for open connections.
        with _serve("postgres", command, log, ready=ready, stop_signal=signal.SIGINT) as port:
            subprocess.run([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                            "fileproc"], check=True, stdin=subprocess.DEVNULL)
            yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/fileproc"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- versitygw -------------------------------------------------------------------------


@dataclass(frozen=True)
class Versitygw:
    """How to reach a running versitygw (S3 over plain HTTP)."""

    endpoint: str
    """``127.0.0.1:PORT``, as the minio SDK wants it."""
    access_key: str
    secret_key: str
    data_dir: Path
    """The posix backend's root: bucket B's object K is the file data_dir/B/K."""
    region: str = "us-east-1"

    @property
    def url(self) -> str:
        """The endpoint as an http URL."""
        return f"http://{self.endpoint}"


def read_from_s3(client: Any, bucket: str, key: str) -> bytes:
    """The whole of ``bucket/key`` through a minio client, its connection given back."""
    response = client.get_object(bucket, key)
    try:
        return bytes(response.read())
    finally:
        response.close()
        response.release_conn()


def versitygw_binary() -> str:
    """The versitygw binary: $FILEPROC_VERSITYGW, PATH, or ~/go/bin; skip/fail without."""
    explicit = os.environ.get("FILEPROC_VERSITYGW")
    if explicit:
        return require("versitygw", explicit)
    if shutil.which("versitygw"):
        return require("versitygw")
    return require("versitygw", str(Path.home() / "go" / "bin" / "versitygw"))


@contextlib.contextmanager
def versitygw_server(webhook_url: str | None = None, port: int | None = None,
                     versioning: bool = False, also_listen: Sequence[str] = (),
                     secret_key: str | None = None) -> Iterator[Versitygw]:
    """A throwaway versitygw over a posix directory, on ``port`` or a free one.

    With ``versioning`` buckets can be made versioned (PutBucketVersioning);
    they start unversioned either way. ``also_listen``: more local addresses to
    listen on, same port (tests/netns.py's hosts). ``secret_key``: the one to
    use (default: a random one), for a config written before the gateway starts.

    With ``webhook_url`` it POSTs a bucket notification (AWS ``Records``
    shape, no Authorization header) for every object change. versitygw posts
    an ``s3:TestEvent`` to that URL when it starts and refuses to start if the
    URL does not answer, so start the receiver first.
    """
    binary = versitygw_binary()
    access_key = "fileproc-test"
    secret_key = secret_key or "fileproc-test-secret-" + os.urandom(6).hex()
    with tempfile.TemporaryDirectory(prefix="fileproc-vgw-") as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        (Path(tmp) / "versions").mkdir()

        def command(port: int) -> list[str]:
            cmd = [binary, "--access", access_key, "--secret", secret_key, "--port", f"127.0.0.1:{port}", "--quiet"]
            for address in also_listen:
                cmd += ["--port", f"{address}:{port}"]
            if webhook_url:
                cmd += ["--event-webhook-url", webhook_url]
            versions = ["--versioning-dir", str(Path(tmp) / "versions")] if versioning else []
            return [*cmd, "posix", *versions, str(data)]

        with _serve("versitygw", command, Path(tmp) / "versitygw.log", port=port) as bound:
            yield Versitygw(f"127.0.0.1:{bound}", access_key, secret_key, data)


# --- MinIO -----------------------------------------------------------------------------


@dataclass(frozen=True)
class MinioServer:
    """How to reach a running MinIO (S3, and STS on the same endpoint, over plain HTTP) as its root user."""

    endpoint: str
    """``127.0.0.1:PORT``, as the minio SDK wants it."""
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    @property
    def url(self) -> str:
        """The endpoint as an http URL (also its STS endpoint)."""
        return f"http://{self.endpoint}"


def minio_binary() -> str:
    """MinIO's server: $FILEPROC_MINIO, or PATH; skip/fail without (.ci/run builds it)."""
    explicit = os.environ.get("FILEPROC_MINIO")
    return require("minio", explicit) if explicit else require("minio")


def _minio_ready(port: int) -> bool:
    import urllib.error
    import urllib.request

    try:  # it accepts connections before it serves: its readiness probe says when it does
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/minio/health/ready", timeout=0.5) as answer:
            return bool(answer.status == 200)
    except (OSError, urllib.error.URLError):
        return False


@contextlib.contextmanager
def minio_server(env: dict[str, str] | None = None) -> Iterator[MinioServer]:
    """A throwaway single-drive MinIO over a fresh temporary directory, on a free port (no console).

    ``env``: more of MinIO's environment, e.g. ``MINIO_NOTIFY_NATS_*`` for its bucket notification targets.
    """
    binary = minio_binary()
    access_key = "fileproc-root"
    secret_key = "fileproc-root-" + os.urandom(6).hex()
    with tempfile.TemporaryDirectory(prefix="fileproc-minio-") as tmp:
        data = Path(tmp) / "data"
        data.mkdir()

        def command(port: int) -> list[str]:
            return ["env", f"MINIO_ROOT_USER={access_key}", f"MINIO_ROOT_PASSWORD={secret_key}",
                    "MINIO_BROWSER=off", "MINIO_UPDATE=off", f"HOME={tmp}",
                    *[f"{name}={value}" for name, value in (env or {}).items()],
                    binary, "server", "--quiet", "--address", f"127.0.0.1:{port}", str(data)]

        with _serve("minio", command, Path(tmp) / "minio.log", ready=_minio_ready) as port:
            yield MinioServer(f"127.0.0.1:{port}", access_key, secret_key)
