"""A burst of photos through fileproc, against the minimal Pillow work for the same outputs.

``--files`` (default 150) distinct 2 MP JPEGs (gradients and camera-like
grain, about 0.8 MB each) each become WebP thumbnails at 1024, 512 and 256 px
(the ``thumbnail`` step with ``{sizes = [1024, 512, 256], format = "webp"}``),
on the same files, on the same cores, in one run:

- **minimal** (the baseline every ratio is against): the Pillow code a user
  would write for the same three files (:func:`minimal_thumbnails`: open,
  ``draft``, three ``thumbnail`` calls, save as WebP at the handler's quality),
  reading the photo from the bucket folder and writing plain files, in a
  2-process ``multiprocessing`` pool;
- **handler**: the ``thumbnail`` handler of ``workers/thumbnail.py`` called
  directly in the same kind of pool, through ``LocalStorage`` (what a runner
  does, without fileproc around it). Its thumbnails are compared byte for
  byte with the minimal work's.

  Both run before and after the fileproc paths, in alternating order; the
  ratios use the mean of the minimal work's two runs. A pool process imports
  and warms up before the burst, as a warm runner has (not counted). Each
  one's own time per file is then measured one file at a time;
- **embedded**: ``fileproc serve`` (local folders, SQLite, embedded broker,
  a worker of concurrency 2); the photos are renamed into the ``uploads``
  bucket folder at once (``watcher.settle_seconds = 0``);
- **s3**: versitygw (posting webhooks) -> ``fileproc api`` -> Redis ->
  ``fileproc worker --concurrency 2``; the photos are uploaded with the minio
  SDK from 4 threads. The S3 server shares the cores; its CPU (and Redis's)
  is reported on a line of its own (``+servers``). Before that burst,
  **minimal-s3**: the minimal work in the same kind of pool on the same
  versitygw (get the photo, put the three files with the minio SDK, as a
  user's own function would), so what the store itself costs is apart from
  what fileproc adds.

Throughput is files / (last thumbnail written - first upload), and the CPU
the processes doing the work used per file (minimal, handler: the pool's tasks; embedded:
everything under ``serve``; S3: ``api`` and ``worker``, not the S3 server or
Redis; ``+servers`` adds theirs). On a shared machine the CPU ratio is the
steadier of the two. Then ``--latency`` photos go through one at a time:
upload -> first thumbnail (the 1024 px one, written first) and -> last,
against the minimal work's own time per file. Output times are the files'
modification times (versitygw's posix backend stores objects as files too),
so no polling delay is counted.

Run from the repository root (the S3 path needs redis-server and versitygw,
see tests/servers.py; it is skipped without them)::

    python -m bench.pipeline                      # 150 files, every way
    python -m bench.pipeline --files 60 --only embedded

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
    server_cpu: dict[str, float] = field(default_factory=dict)  # S3 path: the servers' own CPU seconds, by name
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


# --- plain: the minimal work, and the handler called directly, in a 2-process pool ----------

QUALITY = 85  # the handler's default, which PARAMS leave as it is

_pool_root: Path | None = None


def minimal_thumbnails(source: Path, out_dir: Path) -> None:
    """The Pillow code a user would write for the same three WebP files: open, draft, three
    ``thumbnail`` calls (each from the one before), encode. Reads and writes plain files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with Image.open(source) as image:
        # As thumbnail() itself asks: a JPEG decoded at 1/2..1/8 scale while still 2x the largest size.
        image.draft("RGB", (SIZES[0] * 2, SIZES[0] * 2))
        for size in SIZES:
            image.thumbnail((size, size))
            image.save(out_dir / f"thumb-{size}.webp", quality=QUALITY)


def _pool_init(root: str, warm: str) -> None:
    """A pool process, ready as a warm runner is: imports done and Pillow's codecs set up (not counted)."""
    global _pool_root
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the pool stops its processes with SIGTERM
    _pool_root = Path(root)
    if warm == "handler":
        import tests.helpers  # noqa: F401  (builds no service, but imports all of fileproc: 0.7 s a process)
        from workers.thumbnail import warm as warm_thumbnail

        warm_thumbnail()
    else:
        buffer = io.BytesIO()
        Image.new("RGB", (64, 48), "teal").save(buffer, "JPEG")
        with Image.open(buffer) as sample:
            sample.thumbnail((16, 16))
            sample.save(io.BytesIO(), "WEBP", quality=QUALITY)


def _minimal_one(key: str) -> tuple[float, float]:
    assert _pool_root is not None
    started, cpu = time.perf_counter(), time.process_time()
    minimal_thumbnails(_pool_root / "buckets" / "photos" / key, _pool_root / "minimal" / key)
    return (time.perf_counter() - started) * 1000, time.process_time() - cpu


def _handler_one(key: str) -> tuple[float, float]:
    from fileproc.storage.local import LocalStorage
    from tests.helpers import invocation
    from workers.thumbnail import handler

    assert _pool_root is not None
    started, cpu = time.perf_counter(), time.process_time()
    storage = LocalStorage(_pool_root / "buckets", tmp_dir=_pool_root / "tmp")
    event, context = invocation(storage, "photos", key, _pool_root / "scratch" / key, function_name="thumbnail",
                                params=PARAMS, out_bucket="derived", out_prefix=f"thumbnails/{key}/")
    handler(event, context)
    shutil.rmtree(_pool_root / "scratch" / key, ignore_errors=True)
    return (time.perf_counter() - started) * 1000, time.process_time() - cpu


POOL_TASKS = {"minimal": _minimal_one, "handler": _handler_one}


def plain_root(files: list[Path], latency: list[Path], tmp: Path) -> Path:
    """The photos in a local bucket folder that both plain ways read (written once, as ``put`` writes)."""
    from fileproc.storage.local import LocalStorage

    root = tmp / "plain"
    shutil.rmtree(root, ignore_errors=True)
    storage = LocalStorage(root / "buckets", tmp_dir=root / "tmp")
    storage.ensure_bucket("photos")
    for path in [*files, *latency]:
        storage.put("photos", path.name, path.read_bytes(), content_type="image/jpeg")
    return root


def plain(name: str, files: list[Path], latency: list[Path], root: Path) -> Result:
    """The burst through ``name`` (minimal or handler) in a 2-process pool, then its time per file alone."""
    for folder in ("minimal",) if name == "minimal" else ("buckets/derived", "scratch"):
        shutil.rmtree(root / folder, ignore_errors=True)  # only its own outputs: same_outputs compares both
    return _pool_run(name, POOL_TASKS[name], _pool_init, (str(root), name), files, latency)


def _pool_run(name: str, task: Any, init: Any, init_args: tuple[Any, ...], files: list[Path],
              latency: list[Path], after_burst: Any = None) -> Result:
    with multiprocessing.get_context("fork").Pool(CONCURRENCY, init, init_args) as pool:
        started = time.perf_counter()
        burst = list(pool.imap_unordered(task, [p.name for p in files], chunksize=1))
        seconds = time.perf_counter() - started
        if after_burst:
            after_burst()
        # The work's own time per file: one at a time, in a process that has done it before.
        times = [pool.apply(task, (p.name,))[0] for p in latency]
    # CPU: the tasks' own (the pool's messaging not).
    return Result(name, len(files), seconds, per_file_ms=times, cpu_seconds=sum(cpu for _, cpu in burst))


# --- the minimal work on the S3 store: what a user's own function would do there -----------------

_s3_client: Any = None

MINIMAL_S3_BUCKETS = ("minimal-photos", "minimal-thumbs")
"""Where minimal-s3 reads and writes: no pipeline matches them (the store still notifies fileproc's api)."""


def minimal_s3_thumbnails(client: Any, bucket: str, key: str, out_bucket: str) -> None:
    """:func:`minimal_thumbnails` on a bucket: get the photo, put the three WebP files (minio SDK)."""
    response = client.get_object(bucket, key)
    try:
        data = response.read()
    finally:
        response.close()
        response.release_conn()
    with Image.open(io.BytesIO(data)) as image:
        image.draft("RGB", (SIZES[0] * 2, SIZES[0] * 2))
        for size in SIZES:
            image.thumbnail((size, size))
            buffer = io.BytesIO()
            image.save(buffer, "WEBP", quality=QUALITY)
            client.put_object(out_bucket, f"{key}/thumb-{size}.webp", io.BytesIO(buffer.getvalue()),
                              buffer.tell(), content_type="image/webp")


def _minimal_s3_init(endpoint: str, access_key: str, secret_key: str) -> None:
    global _s3_client
    from minio import Minio

    _pool_init("/nonexistent", "minimal")
    _s3_client = Minio(endpoint, access_key, secret_key, secure=False)
    _s3_client.bucket_exists(MINIMAL_S3_BUCKETS[0])  # a connection made, as a warm function has one


def _minimal_s3_one(key: str) -> tuple[float, float]:
    started, cpu = time.perf_counter(), time.process_time()
    minimal_s3_thumbnails(_s3_client, MINIMAL_S3_BUCKETS[0], key, MINIMAL_S3_BUCKETS[1])
    return (time.perf_counter() - started) * 1000, time.process_time() - cpu


def minimal_s3(gw: Any, client: Any, files: list[Path], latency: list[Path]) -> Result:
    """The minimal work in a 2-process pool, reading and writing versitygw; the servers' CPU beside it."""
    for bucket in MINIMAL_S3_BUCKETS:
        client.make_bucket(bucket)
    for path in [*files, *latency]:
        client.fput_object(MINIMAL_S3_BUCKETS[0], path.name, str(path), content_type="image/jpeg")
    servers = _servers()
    before = {name: _tree_cpu(*pids) for name, pids in servers.items()}
    used: dict[str, float] = {}

    def servers_cpu() -> None:
        used.update({name: _tree_cpu(*pids) - before[name] for name, pids in servers.items() if pids})

    result = _pool_run("minimal-s3", _minimal_s3_one, _minimal_s3_init, (gw.endpoint, gw.access_key, gw.secret_key),
                       files, latency, after_burst=servers_cpu)
    result.server_cpu = used
    return result


def same_outputs(root: Path, keys: list[str]) -> tuple[int, int]:
    """(identical, compared): the handler's thumbnails against the minimal work's, byte for byte."""
    pairs = [(root / "minimal" / key / f"thumb-{size}.webp",
              root / "buckets" / "derived" / "thumbnails" / key / f"thumb-{size}.webp")
             for key in keys for size in SIZES]
    return sum(a.read_bytes() == b.read_bytes() for a, b in pairs if a.exists() and b.exists()), len(pairs)


def _children_named(name: str) -> list[int]:
    """This process's own children whose program is ``name`` (the servers tests/servers.py started)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            parent = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            program = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")[0]
        except (OSError, IndexError):
            continue
        # Redis rewrites its argv[0] to "redis-server 127.0.0.1:PORT".
        if parent == os.getpid() and os.path.basename(program.split(b" ")[0]).decode(errors="replace") == name:
            found.append(int(entry))
    return found


def _servers() -> dict[str, list[int]]:
    return {"versitygw": _children_named("versitygw"), "redis": _children_named("redis-server")}


@dataclass
class _Proc:
    label: str
    own: int  # clock ticks: its utime + stime
    reaped: int  # its children's that have ended: cutime + cstime


def _tree(*roots: int) -> dict[int, _Proc]:
    """``roots`` and every process below them, each named by what it runs."""
    parents: dict[int, int] = {}
    found: dict[int, tuple[list[str], int, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        found[int(entry)] = (argv, int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14]))
    inside = set(roots)
    grew = True
    while grew:
        before = len(inside)
        inside |= {pid for pid, parent in parents.items() if parent in inside}
        grew = len(inside) > before

    def label(pid: int) -> str:
        # A process running what its parent runs was forked from it: the worker's pool processes
        # ("celeryd fork") and the runners below them ("celeryd fork fork"; one level under serve's worker).
        argv, parent = found[pid][0], found.get(parents[pid])
        return label(parents[pid]) + " fork" if parent is not None and parent[0] == argv else _label(argv)

    return {pid: _Proc(label(pid), *found[pid][1:]) for pid in inside & found.keys()}


def _label(argv: list[str]) -> str:
    if "fileproc" in argv:  # python -m fileproc --config X COMMAND ...
        rest = argv[argv.index("fileproc") + 1:]
        while rest and rest[0].startswith("--"):
            rest = rest[2:]
        return f"fileproc {rest[0]}" if rest else "fileproc"
    # Redis rewrites its argv[0] to "redis-server HOST:PORT", Celery's worker to "[celeryd: NAME:MainProcess] ...".
    return os.path.basename(argv[0].split(" ")[0]).strip("[:]")


def _tree_cpu(*roots: int) -> float:
    """CPU seconds of ``roots`` and every process below them, including the reaped ones."""
    return sum(p.own + p.reaped for p in _tree(*roots).values()) / os.sysconf("SC_CLK_TCK")


def _cpu_by_process(before: dict[int, _Proc], after: dict[int, _Proc]) -> dict[str, float]:
    """CPU seconds used between two looks at a tree, by process name (ended ones under "ended")."""
    used: dict[str, float] = {}
    for pid, now in after.items():
        then = before.get(pid)
        used[now.label] = used.get(now.label, 0) + now.own - (then.own if then else 0)
        used["ended"] = used.get("ended", 0) + now.reaped - (then.reaped if then else 0)
    for pid, then in before.items():
        if pid not in after:  # ended meanwhile: its parent's reaped ticks hold all of its own
            used["ended"] = used.get("ended", 0) - then.own
    return {label: ticks / os.sysconf("SC_CLK_TCK") for label, ticks in used.items() if ticks}


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
           *roots: int) -> tuple[float, dict[str, float], int]:
    """Upload every key at once: seconds from the first upload to the last thumbnail written, CPU seconds
    used by process, and how many files got all their thumbnails (only those count: a file whose
    notification never came is not processed in the burst)."""
    tree = _tree(*roots)
    started = time.time()
    upload(keys)
    lasts = [_outputs(derived, key)[-1] for key in keys]
    # Every file's thumbnails, or its job ended without them (then the report says so).
    _wait(lambda: all(p.exists() for p in lasts) or _finished(db) >= len(keys), 300,
          f"{len(keys)} files' thumbnails", process, every=0.1)
    used = _cpu_by_process(tree, _tree(*roots))
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
        seconds, by_process, made = _burst(upload, [p.name for p in files], derived, root / "data" / "state.db",
                                           serve, serve.popen.pid)
        first, done = _one_at_a_time(upload, [p.name for p in latency], derived, serve)
        note = _cold_and_warm(config)
    finally:
        serve.stop()
    return Result("embedded", made, seconds, first_ms=first, done_ms=done, cpu_seconds=sum(by_process.values()),
                  note=_unmade(len(files), made) + note + _breakdown(by_process, made))


def s3(files: list[Path], latency: list[Path], tmp: Path) -> list[Result]:
    """The minimal work on versitygw (minimal-s3), then the burst through fileproc's S3 path."""
    try:
        from minio import Minio

        from tests.servers import redis_server, versitygw_server
    except ImportError as exc:
        print(f"s3 path skipped: {exc}", file=sys.stderr)
        return []
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
            return []
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
            return []
        settings["storage"]["secret_key"] = gw.secret_key
        _config(config, settings)
        client = Minio(gw.endpoint, gw.access_key, gw.secret_key, secure=False)
        client.make_bucket("uploads")
        worker = _Process(config, ["worker", "--concurrency", str(CONCURRENCY)], root / "worker.log")
        stack.callback(worker.stop)
        _wait(lambda: "ready" in worker.log.read_text(errors="replace"), 60, "the worker", worker, every=0.2)
        minimal = minimal_s3(gw, client, files, latency)
        print(f"minimal-s3: {minimal.rate:.2f} files/s, {minimal.cpu_ms_per_file:.1f} ms CPU a file", flush=True)
        by_name = {p.name: p for p in [*files, *latency]}
        threads = concurrent.futures.ThreadPoolExecutor(4)
        stack.callback(threads.shutdown)

        def put(key: str) -> None:
            data = by_name[key].read_bytes()
            client.put_object("uploads", key, io.BytesIO(data), len(data), content_type="image/jpeg")

        def upload(keys: list[str]) -> None:
            list(threads.map(put, keys))

        derived = gw.data_dir / "derived"
        servers = _servers()
        before = {name: _tree_cpu(*pids) for name, pids in servers.items()}
        seconds, by_process, made = _burst(upload, [p.name for p in files], derived, root / "state.db", worker,
                                           worker.popen.pid, api.popen.pid)
        server_cpu = {name: _tree_cpu(*pids) - before[name] for name, pids in servers.items() if pids}
        first, done = _one_at_a_time(upload, [p.name for p in latency], derived, worker)
        note = _cold_and_warm(config)
    return [minimal, Result("s3", made, seconds, first_ms=first, done_ms=done, cpu_seconds=sum(by_process.values()),
                            server_cpu=server_cpu, note=_unmade(len(files), made) + note
                            + " (CPU: api and worker; the servers' on the next line)" + _breakdown(by_process, made))]


def _breakdown(by_process: dict[str, float], files: int) -> str:
    """Where the burst's CPU went, per file, by process name (see :func:`_tree`)."""
    parts = sorted(by_process.items(), key=lambda item: -item[1])
    return "; burst CPU ms/file by process: " + ", ".join(f"{label} {cpu * 1000 / files:.1f}" for label, cpu in parts)


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


def report(results: list[Result], plains: dict[str, list[Result]], outputs: tuple[int, int]) -> str:
    minimal = plains["minimal"]
    base_rate = statistics.mean(p.rate for p in minimal)
    base_cpu = statistics.mean(p.cpu_ms_per_file for p in minimal)
    per_file = statistics.median(t for p in minimal for t in p.per_file_ms)
    lines = [f"{'':10}{'files':>6}{'s':>8}{'files/s':>9}{'ratio':>7}{'CPU ms/f':>10}{'CPU ratio':>10}"
             f"{'first p50':>11}{'last p50':>10}{'-minimal':>10}"]
    for p in [*minimal, *plains["handler"]]:
        lines.append(f"{p.name:10}{p.files:>6}{p.seconds:>8.2f}{p.rate:>9.2f}{p.rate / base_rate:>7.2f}"
                     f"{p.cpu_ms_per_file:>10.1f}{base_cpu / p.cpu_ms_per_file:>10.2f}"
                     f"{'':>11}{statistics.median(p.per_file_ms):>10.1f}")
    for r in results:
        first = statistics.median(r.first_ms) if r.first_ms else float("nan")
        done = statistics.median(r.done_ms or r.per_file_ms) if r.done_ms or r.per_file_ms else float("nan")
        lines.append(f"{r.name:10}{r.files:>6}{r.seconds:>8.2f}{r.rate:>9.2f}{r.rate / base_rate:>7.2f}"
                     f"{r.cpu_ms_per_file:>10.1f}{base_cpu / r.cpu_ms_per_file:>10.2f}"
                     f"{first:>11.1f}{done:>10.1f}{done - per_file:>+10.1f}")
        if r.server_cpu:
            servers = sum(r.server_cpu.values()) * 1000 / r.files
            parts = ", ".join(f"{name} {cpu * 1000 / r.files:.1f}" for name, cpu in r.server_cpu.items())
            lines.append(f"{'+servers':>10}{'':>30}{r.cpu_ms_per_file + servers:>10.1f}"
                         f"{base_cpu / (r.cpu_ms_per_file + servers):>10.2f}   (servers' CPU ms/f: {parts})")
    handler_cpu = statistics.mean(p.cpu_ms_per_file for p in plains["handler"])
    handler_alone = statistics.median(t for p in plains["handler"] for t in p.per_file_ms)
    lines.append(f"handler / minimal work, CPU per photo in the bursts: {handler_cpu:.1f} / {base_cpu:.1f} ms = "
                 f"{handler_cpu / base_cpu:.3f}; one at a time: {handler_alone:.1f} / {per_file:.1f} ms = "
                 f"{handler_alone / per_file:.3f}; thumbnails byte for byte the same: {outputs[0]} of {outputs[1]}")
    lines.append("ratio: files/s over the minimal work's (mean of its two runs); CPU ratio: the minimal work's CPU "
                 "per file over this one's (the throughput ratio on idle cores, where both are CPU-bound); "
                 "+servers: with the S3 server's and Redis's CPU counted (in the burst). last p50 of minimal, "
                 "handler, minimal-s3: their own time per file, one at a time (ms); first/last p50: upload -> "
                 "first/last thumbnail, one file at a time, ms; -minimal: last p50 minus the minimal work's time per "
                 "file (median of its two runs)")
    lines += [f"{r.name}: {r.note}" for r in results if r.note]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=150, help="photos in the burst (default 150)")
    parser.add_argument("--latency", type=int, default=15, help="photos sent one at a time after (default 15)")
    parser.add_argument("--only", default="embedded,s3",
                        help="comma-separated: embedded, s3 (the minimal work and the handler always run)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped"))  # so the servers started are stopped too
    chosen = set(args.only.split(","))
    made = time.perf_counter()
    every = photos(args.files + args.latency)
    files, latency = every[:args.files], every[args.files:]
    print(f"{len(every)} photos of {MEGAPIXELS:g} MP ({statistics.mean(p.stat().st_size for p in files) / 1e6:.2f} MB"
          f" on average) ready in {time.perf_counter() - made:.1f} s; code from {_code_root()}", flush=True)
    results: list[Result] = []
    plains: dict[str, list[Result]] = {"minimal": [], "handler": []}
    with tempfile.TemporaryDirectory(prefix="fileproc-bench-") as tmp:
        root = plain_root(files, latency, Path(tmp))

        def both() -> None:  # the two plain ways, in alternating order, before and after the fileproc paths
            for name in ("minimal", "handler") if not plains["minimal"] else ("handler", "minimal"):
                plains[name].append(plain(name, files, latency, root))
                print(f"{name}: {plains[name][-1].rate:.2f} files/s, "
                      f"{plains[name][-1].cpu_ms_per_file:.1f} ms CPU a file", flush=True)

        both()
        outputs = same_outputs(root, [p.name for p in [*files, *latency]])
        if "embedded" in chosen:
            results.append(embedded(files, latency, Path(tmp)))
            print(f"embedded: {results[-1].rate:.2f} files/s", flush=True)
        if "s3" in chosen:
            found = s3(files, latency, Path(tmp))
            results += found
            if found:
                print(f"s3: {found[-1].rate:.2f} files/s", flush=True)
        both()
    print(report(results, plains, outputs))


def _code_root() -> str:
    import fileproc

    return str(Path(fileproc.__file__).resolve().parents[1])


if __name__ == "__main__":
    main()
