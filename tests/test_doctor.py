"""``fileproc doctor`` says what is wrong in plain words: the data folder, and the network."""

from __future__ import annotations

import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import fileproc, write_config
from tests.servers import require


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections and never says a word (a hung server)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def test_a_hung_broker_and_database_are_reported_as_timed_out(tmp_path: Path, silent_port: int) -> None:
    config = write_config(tmp_path / "f.toml", {
        "data_dir": str(tmp_path / "data"),
        "broker": {"url": f"redis://127.0.0.1:{silent_port}/0"},
        "database": {"url": f"postgresql+psycopg://fileproc@127.0.0.1:{silent_port}/fileproc", "timeout": 2},
    })
    out = fileproc(config, "doctor", check=False, timeout=90)
    assert out.returncode == 1
    lines = {line.split(":")[0]: line for line in out.stdout.splitlines()}
    assert lines["[ERR] broker"].endswith("timed out"), out.stdout
    assert lines["[ERR] database"].endswith("timed out"), out.stdout
    assert "Error" not in out.stdout  # no library exception names


def test_no_network_is_reported_as_network_unreachable(tmp_path: Path) -> None:
    unshare = require("unshare")
    config = write_config(tmp_path / "f.toml", {
        "data_dir": str(tmp_path / "data"),
        "broker": {"url": "redis://127.0.0.1:6399/0"},
        "storage": {"backend": "s3", "endpoint": "127.0.0.1:7399", "secure": False,
                    "access_key": "k", "secret_key": "s"},
    })
    # A new network namespace has only a loopback that is down: no network at all.
    out = fileproc(config, "doctor", check=False, timeout=90, wrap=[unshare, "--net"])
    lines = {line.split(":")[0]: line for line in out.stdout.splitlines()}
    assert lines["[ERR] broker"].endswith("network unreachable"), out.stdout + out.stderr
    assert lines["[ERR] storage"].endswith("network unreachable"), out.stdout + out.stderr


def test_the_data_folder_is_checked(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "data"
    not_a_folder.write_text("a file where the data folder should be")
    out = fileproc(write_config(tmp_path / "f.toml", {"data_dir": str(not_a_folder)}), "doctor", check=False)
    assert f"[ERR] data folder: {not_a_folder} is not a folder" in out.stdout
    fresh = tmp_path / "new" / "data"
    out = fileproc(write_config(tmp_path / "g.toml", {"data_dir": str(fresh)}), "doctor", check=False)
    assert "[ok ] data folder:" in out.stdout and "created on first start" in out.stdout
    assert not fresh.exists()  # doctor only looks
    shutil.rmtree(tmp_path / "new", ignore_errors=True)
