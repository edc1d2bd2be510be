"""A burst of photos through fileproc, against the same Pillow work done plainly.

``--files`` (default 150) distinct 2 MP JPEGs (gradients and camera-like
grain, about 0.6 MB each) each become WebP thumbnails at 1024, 512 and 256 px
(the ``thumbnail`` step with ``{sizes = [1024, 512, 256], format = "webp"}``),
three ways, on the same files, on the same cores, in one run:

- **plain**: the ``thumbnail`` handler of ``workers/thumbnail.py`` called
  directly in a 2-process ``multiprocessing`` pool, reading and writing a
  local bucket folder: the work itself, nothing around it (run before and
  after the fileproc paths; the ratios use the mean of the two). Its own
  time per file is then measured one file at a time;
- **embedded**: ``fileproc serve`` (local folders, SQLite, embedded broker,
  a worker of concurrency 2); the photos are renamed into the ``uploads``
  bucket folder at once (``watcher.settle_seconds = 0``);
- **s3**: versitygw (posting webhooks) -> ``fileproc api`` -> Redis ->
  ``fileproc worker --concurrency 2``; the photos are uploaded with the minio
  SDK from 4 threads. The S3 server shares the cores.

Throughput is files / (last thumbnail written - first upload), and the CPU
the processes doing the work used per file (plain: the pool; embedded:
everything under ``serve``; S3: ``api`` and ``worker``, not the S3 server or
Redis). On a shared machine the CPU ratio is the steadier of the two. Then
``--latency`` photos go through one at a time: upload -> first thumbnail
(the 1024 px one, written first) and -> last, against the plain work's own
time per file. Output times are the files' modification times (versitygw's
posix backend stores objects as files too), so no polling delay is counted.

Run from the repository root (the S3 path needs redis-server and versitygw,
see tests/servers.py; it is skipped without them)::

    python -m bench.pipeline                      # 150 files, all three
    python -m bench.pipeline --files 60 --only plain,embedded

Against other code (say the commit before a change, checked out in a
worktree), run this file with that code first on the path::

    cd /tmp/before && PYTHONPATH=/tmp/before python /work/main/bench/pipeline.py
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import io
import json
import multiprocessing
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import tomli_w
from PIL import Image

SIZES = [1024, 512, 256]
PARAMS: dict[str, Any] = {"sizes": SIZES, "format": "webp"}
CONCURRENCY = 2
MEGAPIXELS = 2.0
GRAIN = 0.25
PHOTO_CACHE = Path(tempfile.gettempdir()) / "fileproc-bench-photos"


@dataclass
class Result:
    """One way of doing the burst."""

    name: str
    files: int
    seconds: float
    per_file_ms: list[float] = field(default_factory=list)  # plain: each file's own time, one at a time
    first_ms: list[float] = field(default_factory=list)  # upload -> first thumbnail, one file at a time
    done_ms: list[float] = field(default_factory=list)  # upload -> last thumbnail
    cpu_seconds: float = 0.0  # CPU the doing processes used during the burst (all their processes)
    note: str = ""

    @property
    def rate(self) -> float:
        return self.files / self.seconds

    @property
    def cpu_ms_per_file(self) -> float:
        return self.cpu_seconds * 1000 / self.files


# --- the photos ------------------------------------------------------------------------


def photos(count: int) -> list[Path]:
    """``count`` distinct photo-like JPEGs, made once and kept in a cache folder."""
    folder = PHOTO_CACHE / f"{count}-{MEGAPIXELS:g}mp-{GRAIN:g}"
    files = sorted(folder.glob("*.jpg"))
    if len(files) == count:
        return files
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    width = int((MEGAPIXELS * 1e6 * 4 / 3) ** 0.5)
    height = width * 3 // 4
    noise = Image.effect_noise((width * 2, height * 2), 48).convert("RGB")
    shades = [Image.linear_gradient("L").resize((width, height)), Image.radial_gradient("L").resize((width, height)),
              Image.linear_gradient("L").rotate(90).resize((width, height))]
    rng = random.Random(7)
    for n in range(count):
        bands = rng.sample(shades, 3)
        gradient = Image.merge("RGB", [_dim(band, rng.uniform(0.5, 1.0)) for band in bands])
        x, y = rng.randrange(width), rng.randrange(height)
        grain = noise.crop((x, y, x + width, y + height))
        Image.blend(gradient, grain, GRAIN).save(folder / f"photo-{n:04d}.jpg", "JPEG", quality=90)
    return sorted(folder.glob("*.jpg"))


def _dim(band: Image.Image, factor: float) -> Image.Image:
    return band.point(lambda v: int(v * factor))


# --- plain: the handler in a 2-process pool ----------------------------------------------

_plain_root: Path | None = None


def _plain_init(root: str) -> None:
    global _plain_root
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the pool stops its processes with SIGTERM
    _plain_root = Path(root)


def _plain_one(key: str) -> tuple[float, float]:
    from fileproc.storage.local import LocalStorage
    from tests.helpers import invocation
    from workers.thumbnail import handler

    assert _plain_root is not None
    started, cpu = time.perf_counter(), time.process_time()
    storage = LocalStorage(_plain_root / "buckets", tmp_dir=_plain_root / "tmp")
    event, context = invocation(storage, "photos", key, _plain_root / "scratch" / key, function_name="thumbnail",
                                params=PARAMS, out_bucket="derived", out_prefix=f"thumbnails/{key}/")
    handler(event, context)
    shutil.rmtree(_plain_root / "scratch" / key, ignore_errors=True)
    return (time.perf_counter() - started) * 1000, time.process_time() - cpu


def plain(files: list[Path], latency: list[Path], tmp: Path) -> Result:
    from fileproc.storage.local import LocalStorage

    root = tmp / "plain"
    shutil.rmtree(root, ignore_errors=True)
    storage = LocalStorage(root / "buckets", tmp_dir=root / "tmp")
    storage.ensure_bucket("photos")
    for path in [*files, *latency]:
        storage.put("photos", path.name, path.read_bytes(), content_type="image/jpeg")
    with multiprocessing.get_context("fork").Pool(CONCURRENCY, _plain_init, (str(root),)) as pool:
        started = time.perf_counter()
        burst = list(pool.imap_unordered(_plain_one, [p.name for p in files], chunksize=1))
        seconds = time.perf_counter() - started
        # The work's own time per file: one at a time, in a process that has done it before.
        times = [pool.apply(_plain_one, (p.name,))[0] for p in latency]
    # CPU: the tasks' own (Pillow's first-use set-up included; the pool's messaging not).
    return Result("plain", len(files), seconds, per_file_ms=times, cpu_seconds=sum(cpu for _, cpu in burst))


def _tree_cpu(*roots: int) -> float:
    """CPU seconds of ``roots`` and every process below them, including the reaped ones."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        ticks[int(entry)] = sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    inside = set(roots)
    grew = True
    while grew:
        before = len(inside)
        inside |= {pid for pid, parent in parents.items() if parent in inside}
        grew = len(inside) > before
    return sum(ticks.get(pid, 0) for pid in inside) / os.sysconf("SC_CLK_TCK")


# --- fileproc, one file at a time and as a burst ------------------------------------------


def _config(path: Path, settings: dict[str, Any]) -> Path:
    settings["pipelines"] = [{
        "name": "thumbnails",
        "match": {"bucket": "uploads", "suffix": ".jpg"},
        "steps": [{"function": "thumbnail", "params": PARAMS}],
        "output": {"bucket": "derived", "key": "thumbnails/{key}/{name}"},
    }]
    settings.setdefault("worker", {})["concurrency"] = CONCURRENCY
    path.write_text(tomli_w.dumps(settings))
    return path


class _Process:
    """A fileproc command in its own session, logging to a file."""

    def __init__(self, config: Path, args: list[str], log: Path) -> None:
        self.log = log
        with log.open("ab") as out:
            self.popen = subprocess.Popen([sys.executable, "-m", "fileproc", "--config", str(config), *args],
                                          stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          start_new_session=True, cwd=config.parent)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()

    def check(self) -> None:
        if self.popen.poll() is not None:
            raise RuntimeError(f"{self.popen.args[-1]} exited:\n{self.log.read_text()[-3000:]}")


def _wait(predicate: Any, timeout: float, what: str, process: _Process | None = None, every: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if process is not None:
            process.check()
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _outputs(derived: Path, key: str) -> list[Path]:
    return [derived / "thumbnails" / key / f"thumb-{size}.webp" for size in SIZES]


def _finished(db: Path) -> int:
    """Jobs that have ended (succeeded, failed or skipped), read from the state database."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
            return int(conn.execute("SELECT count(*) FROM jobs WHERE status IN ('succeeded', 'failed', 'skipped')")
                       .fetchone()[0])
    except sqlite3.Error:
        return 0


def _burst(upload: Any, keys: list[str], derived: Path, db: Path, process: _Process,
           *roots: int) -> tuple[float, float, int]:
    """Upload every key at once: seconds from the first upload to the last thumbnail written, CPU seconds
    used, and how many files got all their thumbnails (only those count: a file whose notification
    never came is not processed in the burst)."""
    cpu = _tree_cpu(*roots)
    started = time.time()
    upload(keys)
    lasts = [_outputs(derived, key)[-1] for key in keys]
    # Every file's thumbnails, or its job ended without them (then the report says so).
    _wait(lambda: all(p.exists() for p in lasts) or _finished(db) >= len(keys), 300,
          f"{len(keys)} files' thumbnails", process, every=0.1)
    used = _tree_cpu(*roots) - cpu
    written = max(p.stat().st_mtime for key in keys for p in _outputs(derived, key) if p.exists())
    made = sum(all(p.exists() for p in _outputs(derived, key)) for key in keys)
    return written - started, used, made


def _one_at_a_time(upload: Any, keys: list[str], derived: Path, process: _Process) -> tuple[list[float], list[float]]:
    first, done = [], []
    for key in keys:
        started = time.time()
        _uploaded[key] = started
        upload([key])
        last = _outputs(derived, key)[-1]
        try:
            _wait(last.exists, 30, f"{key}'s thumbnails", process, every=0.002)
        except RuntimeError as exc:  # its job ended without them (see the jobs' note in the report)
            print(exc, file=sys.stderr)
            continue
        times = [p.stat().st_mtime for p in _outputs(derived, key)]
        first.append((min(times) - started) * 1000)
        done.append((max(times) - started) * 1000)
    return first, done


_uploaded: dict[str, float] = {}  # key -> when the one-at-a-time run uploaded it (time.time())


def _when(text: str) -> float:
    from datetime import UTC, datetime

    moment = datetime.fromisoformat(text)
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _latency_parts(found: list[dict[str, Any]]) -> str:
    """Where one file's time goes, from the state database's timestamps (medians over the one-at-a-time files)."""
    parts: dict[str, list[float]] = {"upload->job": [], "job->attempt": [], "in the runner": [],
                                     "attempt->finished": []}
    for job in found:
        if job["key"] not in _uploaded or not job["attempts"] or not job["finished_at"]:
            continue
        attempt = job["attempts"][-1]
        created, began = _when(job["created_at"]), _when(attempt["started_at"])
        parts["upload->job"].append((created - _uploaded[job["key"]]) * 1000)
        parts["job->attempt"].append((began - created) * 1000)
        parts["in the runner"].append(float(attempt["duration_ms"] or 0))
        parts["attempt->finished"].append((_when(job["finished_at"]) - began) * 1000)
    if not parts["upload->job"]:
        return ""
    return "; one file at a time, p50 ms: " + ", ".join(f"{name} {statistics.median(v):.0f}"
                                                        for name, v in parts.items())


def _cold_and_warm(config: Path) -> str:
    """What the jobs' attempts recorded: cold starts and warm reuses (and anything not succeeded)."""
    out = subprocess.run([sys.executable, "-m", "fileproc", "--config", str(config), "jobs", "--json", "--limit",
                          "100000"], capture_output=True, text=True, check=True, cwd=config.parent).stdout
    found = json.loads(out)
    attempts = [a for job in found for a in job["attempts"]]
    cold = sum(1 for a in attempts if a.get("cold_start") is True)
    warm = sum(1 for a in attempts if a.get("cold_start") is False)
    failed = [j for j in found if j["status"] != "succeeded"]
    text = f"{len(found)} jobs, {cold} cold starts, {warm} warm reuses"
    text += (f", {len(failed)} NOT succeeded, e.g. {failed[0]['key']}: {failed[0]['status']}, "
             f"{failed[0]['error']}" if failed else "")
    return text + _latency_parts(found)


def embedded(files: list[Path], latency: list[Path], tmp: Path) -> Result:
    root = tmp / "embedded"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    port = _free_port()
    config = _config(root / "fileproc.toml", {"data_dir": str(root / "data"), "watcher": {"settle_seconds": 0},
                                             "api": {"host": "127.0.0.1", "port": port}})
    uploads, derived = root / "data" / "buckets" / "uploads", root / "data" / "buckets" / "derived"
    staging = root / "data" / "staging"  # same file system: a rename puts a file into place whole
    staging.mkdir(parents=True)
    for path in [*files, *latency]:
        shutil.copyfile(path, staging / path.name)

    def upload(keys: list[str]) -> None:
        for key in keys:
            os.rename(staging / key, uploads / key)

    serve = _Process(config, ["serve", "--port", str(port)], root / "serve.log")
    try:
        _wait(lambda: _healthy(port) and uploads.is_dir(), 60, "fileproc serve", serve, every=0.2)
        # As on the S3 path: the burst meets a started service (its worker's start is not counted).
        _wait(lambda: "celery.apps.worker" in serve.log.read_text(errors="replace"), 60, "serve's worker", serve,
              every=0.2)
        seconds, cpu, made = _burst(upload, [p.name for p in files], derived, root / "data" / "state.db", serve,
                                    serve.popen.pid)
        first, done = _one_at_a_time(upload, [p.name for p in latency], derived, serve)
        note = _cold_and_warm(config)
    finally:
        serve.stop()
    return Result("embedded", made, seconds, first_ms=first, done_ms=done, cpu_seconds=cpu,
                  note=_unmade(len(files), made) + note)


def s3(files: list[Path], latency: list[Path], tmp: Path) -> Result | None:
    try:
        from minio import Minio

        from tests.servers import redis_server, versitygw_server
    except ImportError as exc:
        print(f"s3 path skipped: {exc}", file=sys.stderr)
        return None
    root = tmp / "s3"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    token = "bench-" + os.urandom(6).hex()
    api_port, gw_port = _free_port(), _free_port()
    with contextlib.ExitStack() as stack:
        try:
            redis_url = stack.enter_context(redis_server())
        except BaseException as exc:  # pytest.skip outside pytest
            print(f"s3 path skipped: no redis-server ({exc})", file=sys.stderr)
            return None
        settings: dict[str, Any] = {
            "data_dir": str(root / "data"),
            "storage": {"backend": "s3", "endpoint": f"127.0.0.1:{gw_port}", "access_key": "fileproc-test",
                        "secret_key": "", "secure": False},
            "broker": {"url": redis_url},
            "database": {"url": f"sqlite:///{root / 'state.db'}"},
            "api": {"host": "127.0.0.1", "port": api_port, "webhook_token": token},
        }
        config = _config(root / "fileproc.toml", settings)
        api = _Process(config, ["api"], root / "api.log")
        stack.callback(api.stop)
        _wait(lambda: _healthy(api_port), 60, "fileproc api", api, every=0.2)
        try:
            gw = stack.enter_context(versitygw_server(
                webhook_url=f"http://127.0.0.1:{api_port}/events?token={token}&keys=raw", port=gw_port))
        except BaseException as exc:
            print(f"s3 path skipped: no versitygw ({exc})", file=sys.stderr)
            return None
        settings["storage"]["secret_key"] = gw.secret_key
        _config(config, settings)
        client = Minio(gw.endpoint, gw.access_key, gw.secret_key, secure=False)
        client.make_bucket("uploads")
        worker = _Process(config, ["worker", "--concurrency", str(CONCURRENCY)], root / "worker.log")
        stack.callback(worker.stop)
        _wait(lambda: "ready" in worker.log.read_text(errors="replace"), 60, "the worker", worker, every=0.2)
        by_name = {p.name: p for p in [*files, *latency]}
        threads = concurrent.futures.ThreadPoolExecutor(4)
        stack.callback(threads.shutdown)

        def put(key: str) -> None:
            data = by_name[key].read_bytes()
            client.put_object("uploads", key, io.BytesIO(data), len(data), content_type="image/jpeg")

        def upload(keys: list[str]) -> None:
            list(threads.map(put, keys))

        derived = gw.data_dir / "derived"
        seconds, cpu, made = _burst(upload, [p.name for p in files], derived, root / "state.db", worker,
                                    worker.popen.pid, api.popen.pid)
        first, done = _one_at_a_time(upload, [p.name for p in latency], derived, worker)
        note = _cold_and_warm(config)
    return Result("s3", made, seconds, first_ms=first, done_ms=done, cpu_seconds=cpu,
                  note=_unmade(len(files), made) + note + " (CPU: api and worker, not versitygw or redis)")


def _unmade(uploaded: int, made: int) -> str:
    if made == uploaded:
        return ""
    return (f"{uploaded - made} of {uploaded} burst files without thumbnails, not counted in files/s "
            "(no notification named them: see the superseded jobs); ")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- report --------------------------------------------------------------------------------


def report(results: list[Result], plains: list[Result]) -> str:
    plain_rate = statistics.mean(p.rate for p in plains)
    per_file = statistics.median(t for p in plains for t in p.per_file_ms)
    plain_cpu = statistics.mean(p.cpu_ms_per_file for p in plains)
    lines = [f"{'':10}{'files':>6}{'s':>8}{'files/s':>9}{'ratio':>7}{'CPU ms/f':>10}{'CPU ratio':>10}"
             f"{'first p50':>11}{'last p50':>10}{'-plain':>8}"]
    for p in plains:
        lines.append(f"{'plain':10}{p.files:>6}{p.seconds:>8.2f}{p.rate:>9.2f}{p.rate / plain_rate:>7.2f}"
                     f"{p.cpu_ms_per_file:>10.1f}{plain_cpu / p.cpu_ms_per_file:>10.2f}"
                     f"{'':>11}{statistics.median(p.per_file_ms):>10.1f}")
    for r in results:
        first = statistics.median(r.first_ms) if r.first_ms else float("nan")
        done = statistics.median(r.done_ms) if r.done_ms else float("nan")
        lines.append(f"{r.name:10}{r.files:>6}{r.seconds:>8.2f}{r.rate:>9.2f}{r.rate / plain_rate:>7.2f}"
                     f"{r.cpu_ms_per_file:>10.1f}{plain_cpu / r.cpu_ms_per_file:>10.2f}"
                     f"{first:>11.1f}{done:>10.1f}{done - per_file:>+8.1f}")
    lines.append(f"ratio: files/s over plain's (mean of both plain runs); CPU ratio: plain's CPU per file over this "
                 f"one's (the throughput ratio on idle cores, where both are CPU-bound). Plain per-file time "
                 f"(median of both runs): {per_file:.1f} ms; first/last p50: upload -> first/last thumbnail, "
                 "one file at a time, ms; -plain: last p50 minus the plain time per file (the same work)")
    lines += [f"{r.name}: {r.note}" for r in results if r.note]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=150, help="photos in the burst (default 150)")
    parser.add_argument("--latency", type=int, default=15, help="photos sent one at a time after (default 15)")
    parser.add_argument("--only", default="plain,embedded,s3", help="comma-separated: embedded, s3 (plain always)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped"))  # so the servers started are stopped too
    chosen = set(args.only.split(","))
    made = time.perf_counter()
    every = photos(args.files + args.latency)
    files, latency = every[:args.files], every[args.files:]
    print(f"{len(every)} photos of {MEGAPIXELS:g} MP ({statistics.mean(p.stat().st_size for p in files) / 1e6:.2f} MB"
          f" on average) ready in {time.perf_counter() - made:.1f} s; code from {_code_root()}", flush=True)
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="fileproc-bench-") as tmp:
        plains = [plain(files, latency, Path(tmp))]
        print(f"plain: {plains[0].rate:.2f} files/s", flush=True)
        if "embedded" in chosen:
            results.append(embedded(files, latency, Path(tmp)))
            print(f"embedded: {results[-1].rate:.2f} files/s", flush=True)
        if "s3" in chosen:
            found = s3(files, latency, Path(tmp))
            if found:
                results.append(found)
                print(f"s3: {found.rate:.2f} files/s", flush=True)
        plains.append(plain(files, latency, Path(tmp)))
    print(report(results, plains))


def _code_root() -> str:
    import fileproc

    return str(Path(fileproc.__file__).resolve().parents[1])


if __name__ == "__main__":
    main()
