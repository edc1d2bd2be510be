"""The production deployment as separate processes, for the tests that break it on purpose.

versitygw -> webhook (``?token=T&keys=raw``) -> ``fileproc api`` -> Redis ->
``fileproc worker`` (any number, on this host or on simulated ones), plus
``fileproc reconcile`` when a test wants it. The test reads the state database
directly (a :class:`fileproc.state.Database` on the same URL)::

    with deployment(tmp_path, redis_url=url, database_url=db, pipelines=[...]) as d:
        worker = d.worker("w1")
        d.upload("slow", "a.bin", b"x")
        job = d.wait_for(lambda: d.job_of("slow", "a.bin"), 30, "the job")
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import redis
from minio import Minio

from fileproc.state import Database, Job
from tests.netns import Host
from tests.procs import FUNCTIONS_DIR, Process, wait_for, write_config
from tests.servers import Versitygw, free_port, read_from_s3, versitygw_server

WEBHOOK_TOKEN = "hook-" + os.urandom(8).hex()
ADMIN_TOKEN = "admin-" + os.urandom(8).hex()


def stall_pipeline(runs: Path, first: float, then: float = 0.5, timeout: float = 600) -> dict[str, Any]:
    """Objects in ``slow`` go through ``stall``: ``first`` seconds on the first run, ``then`` after."""
    return {
        "name": "stall",
        "match": {"bucket": "slow"},
        "steps": [{"function": "stall", "timeout": timeout,
                   "params": {"runs": str(runs), "first": first, "then": then}}],
        "output": {"bucket": "slow-out", "key": "{key}/{name}"},
    }


def runs_of(runs: Path, key: str) -> list[int]:
    """The pids of the ``stall`` runs made on ``key`` so far."""
    path = runs / key.replace("/", "%2F")
    return [int(line) for line in path.read_text().split()] if path.exists() else []


TINY_PIPELINE = {
    "name": "tiny",
    "match": {"bucket": "texts", "suffix": [".txt"]},
    "steps": [{"function": "tiny"}],
    "output": {"bucket": "texts-out", "key": "{key}/{name}"},
}


def sqlite_url(tmp: Path) -> str:
    """A SQLite state database in the test's folder."""
    return f"sqlite:///{tmp / 'state.db'}"


@dataclass
class Deployment:
    """One running deployment; every process it started is stopped when its block ends."""

    tmp: Path
    config: Path
    settings: dict[str, Any]
    api_port: int
    db: Database
    gw: Versitygw | None = None
    processes: list[Process] = field(default_factory=list)

    # -- processes --------------------------------------------------------

    def start(self, name: str, args: list[str], host: Host | None = None,
              env: dict[str, str] | None = None) -> Process:
        """Start ``fileproc ARGS`` (on ``host``, or here), logging to ``tmp/NAME.log``."""
        process = Process(self.config, args, self.tmp / f"{name}.log", env=env,
                          prefix=host.prefix if host else ())
        self.processes.append(process)
        return process

    def api(self, name: str = "api") -> Process:
        """Start ``fileproc api`` on the deployment's port; returns once it answers /healthz."""
        process = self.start(name, ["api"])
        wait_for(lambda: _healthy(self.api_port, process), 60, "the API to answer /healthz", process)
        return process

    def worker(self, name: str = "worker", host: Host | None = None, concurrency: int = 1) -> Process:
        """Start ``fileproc worker`` (on ``host``, or on this host)."""
        return self.start(name, ["worker", "--concurrency", str(concurrency)], host)

    def stop_all(self) -> None:
        """Stop every process started (newest first), even if one of them will not stop."""
        problems = []
        for process in reversed(self.processes):
            try:
                process.stop()
            except AssertionError as exc:  # it hung and was killed: say so after stopping the rest
                problems.append(f"{process.log.name}: {exc}")
        assert not problems, "\n".join(problems)

    def tail(self) -> str:
        """Every process's log tail, for a failure message."""
        return "\n".join(f"--- {p.log.name} ---\n{p.tail(30)}" for p in self.processes)

    # -- storage ----------------------------------------------------------

    @property
    def client(self) -> Minio:
        assert self.gw is not None
        return Minio(self.gw.endpoint, self.gw.access_key, self.gw.secret_key, secure=False)

    def upload(self, bucket: str, key: str, data: bytes, content_type: str = "application/octet-stream",
               client: Minio | None = None) -> None:
        client = client or self.client
        client.put_object(bucket, key, io.BytesIO(data), len(data), content_type=content_type)

    def ensure_bucket(self, *buckets: str) -> None:
        for bucket in buckets:
            if not self.client.bucket_exists(bucket):
                self.client.make_bucket(bucket)

    def read(self, bucket: str, key: str) -> bytes:
        return read_from_s3(self.client, bucket, key)

    # -- state --------------------------------------------------------------

    def jobs(self) -> list[Job]:
        return self.db.list_jobs(limit=1_000_000)

    def job_of(self, bucket: str, key: str) -> Job | None:
        """The object's job (None if it has none; fails if it has several)."""
        found = self.db.list_jobs(limit=10, bucket=bucket, key=key)
        assert len(found) <= 1, f"{bucket}/{key} has {len(found)} jobs: {found}"
        return found[0] if found else None

    def finished(self, bucket: str, key: str) -> Job | None:
        """The object's job once it has finished."""
        job = self.job_of(bucket, key)
        return job if job is not None and job.finished else None

    def wait_for(self, predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
        """Poll ``predicate`` until truthy; fail with every process's log after ``timeout`` seconds."""
        return wait_for(predicate, timeout, what, self, interval)

    def settled(self, count: int, timeout: float) -> list[Job]:
        """The jobs, once there are ``count`` and none is queued or running."""

        def check() -> list[Job] | None:
            counts = self.db.count_jobs()
            if sum(counts.values()) >= count and counts["queued"] == counts["running"] == 0:
                return self.jobs()
            return None

        return self.wait_for(check, timeout, f"{count} finished jobs", interval=0.5)


def _healthy(port: int, process: Process) -> bool:
    if not process.alive():
        raise AssertionError(f"fileproc exited while starting:\n{process.tail()}")
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def worker_pid(attempt_worker: str) -> int:
    """The pid of the `fileproc worker` an attempt ran on (its name is ``fileproc-PID@host``)."""
    return int(attempt_worker.split("@", 1)[0].rsplit("-", 1)[1])


def seconds_between(start: datetime, end: datetime) -> float:
    """``end - start`` in seconds (both aware datetimes)."""
    return (end - start).total_seconds()


def upload_in_threads(d: Deployment, bucket: str, keys: list[str], threads: int,
                      progress: list[int] | None = None, hold: tuple[int, threading.Event] | None = None) -> None:
    """Upload a small text object per key from ``threads`` client threads; ``progress[0]`` counts them.

    With ``hold`` (N, event), no upload starts past the N-th until ``event``
    is set: a test that kills something mid-burst does it before the burst
    is over, however fast the uploads go.
    """
    assert d.gw is not None
    lock = threading.Lock()
    queue: Iterator[str] = iter(keys)
    errors: list[BaseException] = []

    def run() -> None:
        client = Minio(d.gw.endpoint, d.gw.access_key, d.gw.secret_key, secure=False)
        while True:
            if hold is not None and progress is not None and progress[0] >= hold[0]:
                hold[1].wait(600)
            with lock:
                key = next(queue, None)
            if key is None:
                return
            try:
                d.upload(bucket, key, f"contents of {key}".encode(), "text/plain", client=client)
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)
                return
            if progress is not None:
                with lock:
                    progress[0] += 1

    pool = [threading.Thread(target=run, daemon=True) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(timeout=600)
    assert not errors, errors[:3]
    assert not any(t.is_alive() for t in pool), "uploads did not finish within 600 s"


def check_each_once(d: Deployment, bucket: str, keys: list[str]) -> None:
    """Every key has exactly one job, succeeded, with one output."""
    jobs = [j for j in d.jobs() if j.bucket == bucket]
    by_key: dict[str, list[Job]] = {}
    for job in jobs:
        by_key.setdefault(job.key, []).append(job)
    missing = sorted(set(keys) - set(by_key))
    doubled = sorted(k for k, found in by_key.items() if len(found) > 1)
    assert not missing, f"{len(missing)} uploads have no job, e.g. {missing[:5]}"
    assert not doubled, f"{len(doubled)} uploads have several jobs, e.g. {doubled[:5]}"
    assert sorted(by_key) == sorted(keys)
    failed = [j for j in jobs if j.status != "succeeded"]
    assert not failed, f"{len(failed)} jobs did not succeed, e.g. {failed[:3]}"
    bad_outputs = [j for j in jobs if len(j.outputs) != 1]
    assert not bad_outputs, f"{len(bad_outputs)} jobs without exactly one output, e.g. {bad_outputs[:3]}"


class Restartable:
    """A running server a test stops and starts again, with the same command line (same port, same data).

    ``pid`` is the server's main process (PostgreSQL's postmaster, redis-server);
    ``as_user``: a prefix the command runs under again (``runuser -u postgres --``).
    Call :meth:`close` before the server's own fixture ends (it stops the first run only).
    """

    def __init__(self, pid: int, argv: Sequence[str] | None = None, as_user: Sequence[str] = ()) -> None:
        self.pid = pid
        self.argv = list(argv) if argv is not None else [
            a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
        self.cwd = os.readlink(f"/proc/{pid}/cwd")
        self.as_user = list(as_user)
        self.again: subprocess.Popen[bytes] | None = None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the server (``sig``: SIGINT is PostgreSQL's fast shutdown); returns once it is gone."""
        pid = self.again.pid if self.again is not None else self.pid
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        wait_for(lambda: not _running(pid), 30, f"the server (pid {pid}) to stop")

    def start(self, ready: Callable[[], bool]) -> None:
        """Start it again; returns once ``ready()``."""
        self.again = subprocess.Popen([*self.as_user, *self.argv], cwd=self.cwd, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for(ready, 60, "the server to start again")

    def close(self) -> None:
        if self.again is not None and self.again.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.again.pid, signal.SIGINT)
            try:
                self.again.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.again.pid, signal.SIGKILL)
                self.again.wait(timeout=30)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def restartable_redis(url: str) -> Restartable:
    """The Redis at ``url``, to stop (its data is lost: the test servers keep none) and start again."""
    client = redis.Redis.from_url(url)
    info = client.info("server")
    config = {name: str(value) for name, value in client.config_get("*").items()}
    # (Redis rewrites its own command line: it is made again from what the server says.)
    argv = [info["executable"], "--port", str(info["tcp_port"]), "--bind", *config["bind"].split(),
            "--protected-mode", config["protected-mode"], "--save", "", "--appendonly", "no",
            "--dir", config["dir"], "--requirepass", config["requirepass"]]
    return Restartable(int(info["process_id"]), argv)


def restartable_postgres(url: str) -> Restartable:
    """The PostgreSQL at ``url`` (its postmaster), to stop and start again."""
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as connection:
        backend = connection.execute("SELECT pg_backend_pid()").fetchone()
    assert backend is not None
    postmaster = int(Path(f"/proc/{backend[0]}/stat").read_text().rsplit(")", 1)[1].split()[1])
    return Restartable(postmaster, as_user=["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else [])


def postgres_answers(url: str) -> Callable[[], bool]:
    """Whether PostgreSQL at ``url`` takes a query now."""
    import psycopg

    def answers() -> bool:
        try:
            with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), connect_timeout=2) as c:
                c.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

    return answers


def redis_answers(url: str) -> Callable[[], bool]:
    """Whether Redis at ``url`` answers now."""
    def answers() -> bool:
        try:
            return bool(redis.Redis.from_url(url, socket_timeout=2).ping())
        except redis.RedisError:
            return False

    return answers


def pool_processes(worker_pid: int) -> list[int]:
    """The step processes of a prefork `fileproc worker` (its main process's children)."""
    children = Path(f"/proc/{worker_pid}/task/{worker_pid}/children").read_text().split()
    return [int(pid) for pid in children]


def stopwatch() -> Callable[[], float]:
    """Seconds since this call, on a monotonic clock (for the figures a test prints)."""
    started = time.monotonic()
    return lambda: time.monotonic() - started


@contextlib.contextmanager
def deployment(tmp: Path, *, redis_url: str, database_url: str, pipelines: list[dict[str, Any]],
               address: str = "127.0.0.1", also_listen: Sequence[str] = (), buckets: Sequence[str] = (),
               **sections: dict[str, Any]) -> Iterator[Deployment]:
    """Start the API and versitygw (webhook to the API) for the block; stop everything after.

    ``address`` is where processes reach Redis, the database and versitygw
    (a lab's service address for simulated hosts; the servers must listen
    there); ``sections`` are more settings (``runtime={"lease_seconds": 5}``).
    ``buckets`` are made before the block starts.
    """
    redis.Redis.from_url(redis_url).flushall()
    api_port, gw_port = free_port(), free_port()
    secret = "fileproc-test-secret-" + os.urandom(6).hex()
    config = tmp / "fileproc.toml"
    settings: dict[str, Any] = {
        "data_dir": str(tmp / "data"),
        "storage": {"backend": "s3", "endpoint": f"{address}:{gw_port}", "access_key": "fileproc-test",
                    "secret_key": secret, "secure": False},
        "broker": {"url": redis_url},
        "database": {"url": database_url},
        "api": {"host": "127.0.0.1", "port": api_port, "webhook_token": WEBHOOK_TOKEN, "admin_token": ADMIN_TOKEN},
        "functions": {"paths": [str(FUNCTIONS_DIR)]},
        "pipelines": pipelines,
    }
    for name, values in sections.items():
        settings[name] = {**settings.get(name, {}), **values}
    write_config(config, settings)
    with contextlib.ExitStack() as stack:
        db = Database(database_url)
        stack.callback(db.engine.dispose)
        found = Deployment(tmp, config, settings, api_port, db)
        stack.callback(found.stop_all)
        found.api()
        webhook = f"http://127.0.0.1:{api_port}/events?token={WEBHOOK_TOKEN}&keys=raw"
        found.gw = stack.enter_context(
            versitygw_server(webhook, port=gw_port, also_listen=also_listen, secret_key=secret))
        found.ensure_bucket(*buckets)
        stack.callback(found.stop_all)  # before the gateway goes (stopping twice is harmless)
        yield found


__all__ = ["ADMIN_TOKEN", "TINY_PIPELINE", "WEBHOOK_TOKEN", "Deployment", "Restartable", "check_each_once",
           "deployment", "pool_processes", "postgres_answers", "redis_answers", "restartable_postgres",
           "restartable_redis", "runs_of", "seconds_between", "sqlite_url", "stall_pipeline", "stopwatch",
           "upload_in_threads", "worker_pid"]
