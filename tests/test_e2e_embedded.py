"""End to end on the embedded default: `fileproc serve` with nothing else installed."""

from __future__ import annotations

import contextlib
import signal
import time
from pathlib import Path

from PIL import Image

from fileproc.storage.local import signature_etag
from tests.helpers import image_bytes
from tests.procs import (
    FUNCTIONS_DIR,
    Process,
    fileproc,
    jobs,
    process_running,
    settled,
    wait_for,
    wait_healthy,
    write_config,
)
from tests.servers import free_port


def test_demo_pipeline_on_dropped_and_put_files(tmp_path: Path) -> None:
    port = free_port()
    server = Process(None, ["serve", "--port", str(port)], tmp_path / "serve.log", cwd=tmp_path)
    try:
        wait_healthy(port, server)
        uploads = tmp_path / "fileproc-data" / "buckets" / "uploads"
        wait_for(uploads.is_dir, 10, "the uploads bucket folder", server)

        # A file written slowly, in pieces: processed once, whole.
        data = image_bytes(900, 600, "purple")
        target = uploads / "slow writer.jpg"
        with target.open("wb") as fh:
            for start in range(0, len(data), len(data) // 3 + 1):
                fh.write(data[start:start + len(data) // 3 + 1])
                fh.flush()
                time.sleep(0.6)
        (uploads / "photos" / "2026").mkdir(parents=True)
        (uploads / "photos" / "2026" / "ünï côdé.png").write_bytes(image_bytes(300, 300, "red", "PNG"))
        source = tmp_path / "cat.jpg"
        source.write_bytes(image_bytes(400, 800))
        fileproc(None, "put", str(source), "uploads/from put/cat.jpg", cwd=tmp_path)
        (uploads / "ignored.txt").write_text("no pipeline takes text")

        found = wait_for(settled(None, 3, cwd=tmp_path), 60, "3 finished jobs", server)
        assert sorted(j["key"] for j in found) == ["from put/cat.jpg", "photos/2026/ünï côdé.png", "slow writer.jpg"]
        assert all(j["status"] == "succeeded" for j in found), found
        slow = next(j for j in found if j["key"] == "slow writer.jpg")
        # The whole file, not a piece of it: a dropped file's etag is the signature of its final stat.
        assert slow["version"] == signature_etag(target.stat())
        derived = tmp_path / "fileproc-data" / "buckets" / "derived" / "thumbnails"
        assert Image.open(derived / "slow writer.jpg" / "thumb-256.webp").size == (256, 171)
        assert Image.open(derived / "from put" / "cat.jpg" / "thumb-256.webp").size == (128, 256)
        assert (derived / "photos" / "2026" / "ünï côdé.png" / "thumb-256.webp").exists()
        time.sleep(1.5)  # the thumbnails landing in `derived` must not start anything
        assert len(jobs(None, cwd=tmp_path)) == 3
    finally:
        assert server.stop() == 0, server.tail()


def test_queued_work_survives_a_restart(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path / "fileproc.toml", {
        "data_dir": str(tmp_path / "data"),
        "functions": {"paths": [str(FUNCTIONS_DIR)]},
        "worker": {"concurrency": 1},
        "api": {"port": port},
        "pipelines": [{"name": "slow", "match": {"bucket": "inbox"},
                       "steps": [{"function": "slow", "params": {"seconds": 5}}],
                       "output": {"bucket": "out", "key": "{key}/{name}"}}],
    })
    source = tmp_path / "f.bin"
    source.write_bytes(b"payload")
    server = Process(config, ["serve"], tmp_path / "serve-1.log")
    try:
        wait_healthy(port, server)
        for n in range(3):
            fileproc(config, "put", str(source), f"inbox/file-{n}.bin")
        wait_for(lambda: any(j["status"] == "running" for j in jobs(config)), 30, "a step to start", server)
        server.popen.send_signal(signal.SIGTERM)  # like Ctrl-C
        assert server.popen.wait(60) == 0, server.tail()
    finally:
        server.stop()  # a failed step above must not leave serve running
    before = {j["key"]: j["status"] for j in jobs(config)}
    assert "queued" in before.values(), before  # stopped with work still queued

    # While nothing runs: an upload is recorded and waits for the broker.
    fileproc(config, "put", str(source), "inbox/while-down.bin")

    again = Process(config, ["serve"], tmp_path / "serve-2.log")
    try:
        found = wait_for(settled(config, 4), 90, "every job to finish after the restart", again)
        assert all(j["status"] == "succeeded" for j in found), found
        assert all(len(j["outputs"]) == 1 for j in found)
    finally:
        assert again.stop() == 0, again.tail()


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended since the listing
            found |= {int(c) for c in (task / "children").read_text().split()}
    return found


def test_nothing_outlives_a_killed_serve(tmp_path: Path) -> None:
    port = free_port()
    server = Process(None, ["serve", "--port", str(port)], tmp_path / "serve.log", cwd=tmp_path)
    wait_healthy(port, server)
    children = wait_for(lambda: _children(server.popen.pid) if len(_children(server.popen.pid)) >= 2 else None,
                        20, "the broker and worker processes", server)
    server.popen.send_signal(signal.SIGKILL)  # only serve itself, not its process group
    server.popen.wait(10)
    wait_for(lambda: not any(process_running(pid) for pid in children), 30, "serve's children to stop")
    # The data survives: a new serve on the same data dir starts and answers.
    again = Process(None, ["serve", "--port", str(port)], tmp_path / "serve-2.log", cwd=tmp_path)
    try:
        wait_healthy(port, again)
    finally:
        assert again.stop() == 0, again.tail()
