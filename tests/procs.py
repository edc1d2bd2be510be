"""Run fileproc's own commands (serve, api, worker) as real processes in tests."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import httpx
import tomli_w

from tests.servers import free_port

FUNCTIONS_DIR = Path(__file__).parent / "functions"


def process_running(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie waiting to be reaped does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):  # gone: before the open (ENOENT) or between open and read (ESRCH)
        return False
    return state not in ("Z", "X")


def write_config(path: Path, settings: dict[str, Any]) -> Path:
    path.write_text(tomli_w.dumps(settings))
    return path


def fileproc(config: Path | None, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
             check: bool = True, timeout: float = 60, wrap: list[str] | None = None,
             ) -> subprocess.CompletedProcess[str]:
    """Run one short fileproc command and return its result (``wrap``: a command to run it under)."""
    argv = [*(wrap or []), sys.executable, "-m", "fileproc", *(["--config", str(config)] if config else []), *args]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                            env={**os.environ, **(env or {})})
    if check and result.returncode != 0:
        raise AssertionError(f"fileproc {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


class Process:
    """A long-running fileproc command, in its own process group, logging to a file.

    ``prefix`` runs it through another command that execs it, e.g. ``["ip",
    "netns", "exec", NAME]`` (tests/netns.py), so the pid is still fileproc's.
    """

    def __init__(self, config: Path | None, args: list[str], log: Path, cwd: Path | None = None,
                 env: dict[str, str] | None = None, prefix: Sequence[str] = ()) -> None:
        self.log = log
        argv = [*prefix, sys.executable, "-m", "fileproc", *(["--config", str(config)] if config else []), *args]
        with log.open("ab") as out:
            self.popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          start_new_session=True, cwd=cwd, env={**os.environ, **(env or {})})

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill_group(self, sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)
        self.popen.wait(timeout=30)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM (a clean stop); returns the exit status. Kills the group if it hangs."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill_group()
                raise AssertionError(f"did not stop within {timeout} s:\n{self.tail()}") from None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)  # leftovers, if any
        return self.popen.returncode

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@contextlib.contextmanager
def running(config: Path | None, args: list[str], log: Path, **kwargs: Any) -> Iterator[Process]:
    process = Process(config, args, log, **kwargs)
    try:
        yield process
    finally:
        process.stop()


class HasTail(Protocol):
    def tail(self) -> str: ...


def wait_for(predicate: Callable[[], Any], timeout: float = 30, what: str = "condition",
             log: HasTail | None = None, interval: float = 0.2) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` after ``timeout``.

    ``log``: a Process (or a whole deployment) whose log tail the failure shows.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = f"\n--- log ---\n{log.tail()}" if log else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what}{detail}")
        time.sleep(interval)


def wait_healthy(port: int, process: Process, timeout: float = 30) -> None:
    def healthy() -> bool:
        if not process.alive():
            raise AssertionError(f"fileproc exited while starting:\n{process.tail()}")
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(healthy, timeout, "GET /healthz to answer 200", process)


def jobs(config: Path | None, cwd: Path | None = None, env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """``fileproc jobs --json``, parsed."""
    return json.loads(fileproc(config, "jobs", "--json", "--limit", "1000", cwd=cwd, env=env).stdout)


def settled(config: Path | None, count: int, cwd: Path | None = None,
            env: dict[str, str] | None = None) -> Callable[[], list[dict[str, Any]] | None]:
    """A predicate: the jobs, once there are ``count`` and none is queued or running."""

    def check() -> list[dict[str, Any]] | None:
        found = jobs(config, cwd, env)
        if len(found) >= count and all(j["status"] not in ("queued", "running") for j in found):
            return found
        return None

    return check


__all__ = ["FUNCTIONS_DIR", "Process", "fileproc", "free_port", "jobs", "process_running", "running", "settled",
           "wait_for", "wait_healthy", "write_config"]
