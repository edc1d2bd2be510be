"""The media functions through fileproc's runtime, against the same work done plainly, in one run.

Three figures, each a ratio against a baseline measured in the same script on
the same files:

- **thumbnails/s**: ``--photos`` (default 40) 1600x1200 JPEGs made into WebP
  thumbnails at 512 and 256 px, one at a time, through ``run_step`` (claim,
  HEAD, the warm runner, recorded attempt and outputs; SQLite, local storage)
  against the ``thumbnail`` handler called directly on the same files;
- **transcode time**: a ``--seconds`` (default 5) 1280x720 clip made into
  ``mp4-480p`` through ``run_step``, against the plain ffmpeg command doing
  the same encode (same build: the ffmpeg the function finds; same scale,
  codec, crf, speed, audio), ``--runs`` times each, alternated; with the CPU
  seconds each side used (this process, its runners and every ffmpeg and
  ffprobe they ran), steadier than the time on a shared machine;
- **peak memory** of the step (its runner process, or ffmpeg if higher:
  the attempt's ``peak_memory_kb``) transcoding a raw-video source of
  ``--sizes`` MB (default 10 and 100; add 1000 for 1 GB): it must not grow
  with the source, since the input is spooled to disk and outputs uploaded
  from disk.

Run from the repository root (needs ffmpeg)::

    python -m bench.media
    python -m bench.media --photos 20 --seconds 3 --sizes 10,100,1000
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from PIL import Image, ImageFilter

from fileproc import dispatch
from fileproc.events import ObjectEvent
from fileproc.runtime.runner import run_step
from fileproc.service import Service
from tests.helpers import invocation, local_service
from workers import media, thumbnail


def service_for(tmp: Path, steps: list[dict[str, Any]]) -> Service:
    return local_service(tmp, [{"name": "bench", "match": {"bucket": "inbox"}, "steps": steps,
                                "output": {"bucket": "out", "key": "{key}/{name}"}}])


def through_runtime(service: Service, key: str, source: Path) -> Any:
    """Upload, submit and run the job's one step; the finished job."""
    info = service.storage.put("inbox", key, source)
    (item,) = dispatch.submit(service, ObjectEvent("inbox", key, size=info.size, etag=info.etag), send=False)
    run_step(service, item.job.id, 0, "bench")
    job = service.db.get_job(item.job.id)
    if job is None or job.status != "succeeded":
        raise SystemExit(f"job for {key} did not succeed: {job.error if job else 'missing'}")
    return job


def photos(folder: Path, count: int) -> list[Path]:
    made = []
    for n in range(count):
        image = Image.effect_noise((1600, 1200), 40 + n % 20).convert("RGB").filter(ImageFilter.SMOOTH)
        path = folder / f"photo-{n}.jpg"
        image.save(path, "JPEG", quality=90)
        made.append(path)
    return made


def bench_thumbnails(tmp: Path, count: int) -> str:
    files = photos(tmp, count)
    params = {"sizes": [512, 256], "format": "webp"}
    service = service_for(tmp / "runtime", [{"function": "thumbnail", "params": params}])
    through_runtime(service, "warm-up.jpg", files[0])  # the runner's cold start is not what is measured
    started = time.perf_counter()
    for n, path in enumerate(files):
        through_runtime(service, f"p{n}.jpg", path)
    runtime = time.perf_counter() - started

    storage = service.storage
    started = time.perf_counter()
    for n, path in enumerate(files):
        storage.put("inbox", f"direct-{n}.jpg", path)  # the upload is timed on both sides
        event, context = invocation(storage, "inbox", f"direct-{n}.jpg", tmp / "scratch", function_name="thumbnail",
                                    params=params)
        thumbnail.handler(event, context)
    direct = time.perf_counter() - started
    return (f"thumbnails: {count / runtime:.1f} photos/s through run_step, {count / direct:.1f} direct; "
            f"ratio {direct / runtime:.2f} (1.00: no overhead; {1000 * (runtime - direct) / count:.1f} ms/photo added)")


def clip(path: Path, *, size: str, seconds: float, raw: bool = False) -> Path:
    video = ["-c:v", "rawvideo", "-pix_fmt", "yuv420p"] if raw else ["-c:v", "libx264", "-preset", "ultrafast",
                                                                      "-pix_fmt", "yuv420p"]
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc=size={size}:rate=25:duration={seconds}", "-f", "lavfi", "-i",
                    f"sine=frequency=440:duration={seconds}", *video, "-c:a", "aac", "-shortest", str(path)],
                   check=True)
    return path


def bench_transcode(tmp: Path, seconds: float, runs: int = 5) -> str:
    source = clip(tmp / "hd.mp4", size="1280x720", seconds=seconds)
    service = service_for(tmp / "transcode", [{"function": "transcode", "params": {"preset": "mp4-480p"},
                                               "timeout": 600}])
    binary = media.ffmpeg_binary()  # the one the function runs: plain ffmpeg is the same build
    through_runtime(service, "warm-up.mp4", source)  # the runner's cold start is not what is measured
    plain_command = [binary, "-nostdin", "-loglevel", "error", "-y", "-i", str(source), "-map", "0:v:0",
                     "-map", "0:a:0", "-vf", "scale=854:480", "-c:v", "libx264", "-preset", "veryfast", "-crf", "23",
                     "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "96k", "-movflags", "+faststart",
                     str(tmp / "plain.mp4")]
    through, plain, through_cpu, plain_cpu = [], [], [], []
    for n in range(runs):  # alternated, so a busy moment on the machine hits both
        cpu, started = _cpu(), time.perf_counter()
        through_runtime(service, f"hd-{n}.mp4", source)
        through.append(time.perf_counter() - started)
        through_cpu.append(_cpu() - cpu)
        cpu, started = _cpu(), time.perf_counter()
        subprocess.run(plain_command, check=True)
        plain.append(time.perf_counter() - started)
        plain_cpu.append(_cpu() - cpu)
    t, p = statistics.median(through), statistics.median(plain)
    tc, pc = statistics.median(through_cpu), statistics.median(plain_cpu)
    return (f"transcode {seconds:g} s 720p -> mp4-480p: {t:.2f} s through run_step, {p:.2f} s plain ffmpeg; "
            f"ratio {t / p:.2f} (median of {runs}; pairs {_spread(through, plain)}); CPU {tc:.2f} s against "
            f"{pc:.2f} s, ratio {tc / pc:.2f}; {binary}")


def _spread(through: list[float], plain: list[float]) -> str:
    """The lowest and highest ratio of one run's pair: how noisy the machine was."""
    ratios = sorted(t / p for t, p in zip(through, plain, strict=True))
    return f"{ratios[0]:.2f}-{ratios[-1]:.2f}"


def _cpu() -> float:
    """CPU seconds of this process, its finished children (plain ffmpeg) and its live children (the warm
    runners, with the ffmpeg and ffprobe runs they waited for); Linux only."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    ended = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = own.ru_utime + own.ru_stime + ended.ru_utime + ended.ru_stime
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path("/proc/self/task").iterdir():
        for pid in (task / "children").read_text().split():
            with contextlib.suppress(OSError):  # a child that ended meanwhile
                fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
                total += sum(int(value) for value in fields[11:15]) / tick  # utime stime cutime cstime
    return total


def bench_memory(tmp: Path, sizes_mb: list[int]) -> str:
    service = service_for(tmp / "memory", [{"function": "transcode", "params": {"preset": "mp4-480p"},
                                            "timeout": 3600}])
    frame = 320 * 240 * 3 // 2  # raw yuv420p: the source's size is its length
    lines, peaks = [], []
    for mb in sizes_mb:
        seconds = round(mb * 1024 * 1024 / frame / 25, 2)
        source = clip(tmp / f"raw-{mb}.nut", size="320x240", seconds=seconds, raw=True)
        job = through_runtime(service, f"raw-{mb}.nut", source)
        peak = job.attempts[-1].peak_memory_kb // 1024
        peaks.append(peak)
        lines.append(f"{source.stat().st_size / 1e6:.0f} MB source: peak {peak} MB")
        source.unlink()
    return "peak memory of the step (runner or ffmpeg): " + "; ".join(lines) + \
        f"; ratio largest/smallest {peaks[-1] / max(1, peaks[0]):.2f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=5, help="Transcodes each way (alternated; medians).")
    parser.add_argument("--sizes", default="10,100", help="Source sizes in MB for the memory figure.")
    parser.add_argument("--only", default="thumbnails,transcode,memory")
    args = parser.parse_args(argv)
    wanted = set(args.only.split(","))
    with tempfile.TemporaryDirectory(prefix="fileproc-bench-media-") as folder:
        tmp = Path(folder)
        for name, run in (("thumbnails", lambda: bench_thumbnails(tmp / "thumbnails", args.photos)),
                          ("transcode", lambda: bench_transcode(tmp / "transcode", args.seconds, args.runs)),
                          ("memory", lambda: bench_memory(tmp / "memory", [int(s) for s in args.sizes.split(",")]))):
            if name in wanted:
                (tmp / name).mkdir()
                print(run(), flush=True)


if __name__ == "__main__":
    sys.exit(main())
