"""Thumbnail bench: the handler against the minimal Pillow work, and against a full decode.

Run from the repository root (``-m`` puts it on ``sys.path``)::

    /work/venv/bin/python -m bench.thumbnail_bench
    /work/venv/bin/python -m bench.thumbnail_bench --runs 30 --size 1024 --format jpeg
    /work/venv/bin/python -m bench.thumbnail_bench --megapixels 2 --size 1024,512,256   # bench/pipeline's photo

The variants read the same photo-like JPEG (12 MP by default), make the same
thumbnails (one per ``--size``, each from the one before) and write them:

- ``handler``: the real ``thumbnail`` handler (draft decode at 1/2..1/8 scale,
  then resample), reading and writing through a LocalStorage;
- ``minimal``: the Pillow code a user would write for the same outputs
  (open the file, ``draft``, ``thumbnail``, save to a file);
- ``full decode``: ``Image.open`` + ``load`` at full size, then ``resize``.

Times (wall and CPU) are medians over ``--runs`` alternating runs in this
process; ``handler / minimal`` is what the handler costs beyond the work
itself, and the report says whether their thumbnails are byte for byte the
same. Peak
memory is measured once per variant in a fresh child process, because a
process's peak RSS only ever rises and the allocator keeps freed memory, so
the variant measured second would be judged by the first one's leftovers.
"""

from __future__ import annotations

import argparse
import gc
import io
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from fileproc.storage.local import LocalStorage
from tests.helpers import invocation
from workers.thumbnail import FORMATS, handler

BUCKET = "bench"
REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Setup:
    """One stored input and what both variants need to process it."""

    storage: LocalStorage
    scratch: Path
    key: str
    sizes: tuple[int, ...]
    format: str
    quality: int = 85


def photo_jpeg(megapixels: float, grain: float = 0.25) -> bytes:
    """A 4:3 JPEG of gradients with ``grain`` (0..1) noise blended in.

    Grain sets the file size, and the entropy decoding that draft mode cannot
    skip grows with it: 0.25 makes a 12 MP photo about 5 MB, like a camera's.
    """
    width = int((megapixels * 1e6 * 4 / 3) ** 0.5)
    height = width * 3 // 4
    gradient = Image.merge("RGB", [
        Image.linear_gradient("L").resize((width, height)),
        Image.radial_gradient("L").resize((width, height)),
        Image.linear_gradient("L").rotate(90).resize((width, height)),
    ])
    noise = Image.effect_noise((width, height), 48).convert("RGB")
    buffer = io.BytesIO()
    Image.blend(gradient, noise, grain).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def prepare(root: Path, data: bytes, sizes: tuple[int, ...], fmt: str) -> Setup:
    storage = LocalStorage(root / "buckets", tmp_dir=root / "tmp")
    storage.ensure_bucket(BUCKET)
    storage.put(BUCKET, "photo.jpg", data, content_type="image/jpeg")
    return Setup(storage, root / "scratch", "photo.jpg", sizes, fmt)


def run_handler(setup: Setup) -> None:
    event, context = invocation(
        setup.storage, BUCKET, setup.key, setup.scratch, function_name="thumbnail", out_bucket=BUCKET,
        out_prefix="handler/", params={"sizes": list(setup.sizes), "format": setup.format, "quality": setup.quality},
    )
    handler(event, context)


def run_minimal(setup: Setup) -> None:
    """What a user would write for the same thumbnails, on the same files (the bucket's folder)."""
    folder = setup.storage.root / BUCKET
    fmt = FORMATS[setup.format]
    options = {"optimize": True} if fmt.pillow == "JPEG" else {}  # the handler's JPEG setting
    (folder / "minimal").mkdir(exist_ok=True)
    with Image.open(folder / setup.key) as image:
        image.draft("RGB", (max(setup.sizes) * 2, max(setup.sizes) * 2))  # as thumbnail() itself asks
        for size in sorted(setup.sizes, reverse=True):
            image.thumbnail((size, size))
            image.save(folder / "minimal" / f"thumb-{size}.{fmt.ext}", fmt.pillow, quality=setup.quality, **options)


def run_full_decode(setup: Setup) -> None:
    """What a thumbnailer without draft mode does: decode every pixel, then shrink."""
    with setup.storage.open(BUCKET, setup.key) as stream:
        image: Image.Image = Image.open(stream)
        image.load()
    fmt = FORMATS[setup.format]
    for size in sorted(setup.sizes, reverse=True):
        scale = size / max(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        image.save(buffer, fmt.pillow, quality=setup.quality)
        setup.storage.put(BUCKET, f"baseline/thumb-{size}.{fmt.ext}", buffer.getvalue(),
                          content_type=fmt.content_type)


VARIANTS: dict[str, Callable[[Setup], None]] = {"handler": run_handler, "minimal": run_minimal,
                                                 "full decode": run_full_decode}


def time_variants(setup: Setup, runs: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and CPU milliseconds per run of each variant, alternating so all see the same machine state."""
    for run in VARIANTS.values():
        run(setup)  # warm-up: plugin imports, encoder set-up, page cache
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    cpu: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(runs):
        for name, run in VARIANTS.items():
            # Each timed run follows an untimed one of the same variant: one run just after the full
            # decode (which frees a 12 MP image, whose pages the allocator gives back) would pay page
            # faults the others do not.
            run(setup)
            start, start_cpu = time.perf_counter(), time.process_time()
            run(setup)
            times[name].append((time.perf_counter() - start) * 1000)
            cpu[name].append((time.process_time() - start_cpu) * 1000)
    return times, cpu


def same_thumbnails(setup: Setup) -> tuple[int, int]:
    """(identical, compared): the handler's files against the minimal work's, byte for byte."""
    folder, ext = setup.storage.root / BUCKET, FORMATS[setup.format].ext
    pairs = [(folder / "handler" / f"thumb-{size}.{ext}", folder / "minimal" / f"thumb-{size}.{ext}")
             for size in setup.sizes]
    return sum(a.read_bytes() == b.read_bytes() for a, b in pairs), len(pairs)


# --- peak memory, in a child process per variant ----------------------------------------------


def _proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def peak_in_child(variant: str, input_path: Path, sizes: tuple[int, ...], fmt: str) -> float | None:
    """MiB the variant's run added to the child's peak RSS, or None where unmeasurable."""
    command = [sys.executable, "-m", "bench.thumbnail_bench", "--peak-of", variant,
               "--input", str(input_path), "--size", ",".join(map(str, sizes)), "--format", fmt]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        print(f"peak memory of {variant!r} not measured: {done.stderr.strip()[-500:]}", file=sys.stderr)
        return None
    value = done.stdout.strip()
    return float(value) if value != "n/a" else None


def measure_peak(variant: str, input_path: Path, sizes: tuple[int, ...], fmt: str) -> str:
    """Child side: run ``variant`` once; return the rise of peak RSS in MiB (or ``n/a``)."""
    with tempfile.TemporaryDirectory() as tmp:
        warm = prepare(Path(tmp) / "warm", photo_jpeg(0.01), sizes, fmt)
        VARIANTS[variant](warm)  # load plugins and encoders before measuring
        setup = prepare(Path(tmp) / "real", input_path.read_bytes(), sizes, fmt)
        gc.collect()
        try:
            Path("/proc/self/clear_refs").write_text("5")  # Linux: reset the peak (VmHWM) to now
            before = _proc_status_kib("VmRSS")
        except (OSError, KeyError):
            return "n/a"
        VARIANTS[variant](setup)
        return f"{(_proc_status_kib('VmHWM') - before) / 1024:.1f}"


# --- report -------------------------------------------------------------------------------------


def report(times: dict[str, list[float]], cpu: dict[str, list[float]], peaks: dict[str, float | None],
           same: tuple[int, int], title: str) -> str:
    rows = [title, f"{'variant':<22}{'median ms':>12}{'min ms':>10}{'CPU ms':>10}{'peak MiB':>10}"]
    for name, values in times.items():
        peak = peaks[name]
        peak_text = f"{peak:.1f}" if peak is not None else "n/a"
        rows.append(f"{name:<22}{statistics.median(values):>12.1f}{min(values):>10.1f}"
                    f"{statistics.median(cpu[name]):>10.1f}{peak_text:>10}")

    def ratio(a: str, b: str) -> str:
        peak_a, peak_b = peaks[a], peaks[b]
        peak_ratio = f"{peak_a / peak_b:.2f}x" if peak_a and peak_b else "n/a"
        return (f"{a + ' / ' + b:<22}{statistics.median(times[a]) / statistics.median(times[b]):>11.2f}x"
                f"{'':>10}{statistics.median(cpu[a]) / statistics.median(cpu[b]):>9.2f}x{peak_ratio:>10}")

    rows += [ratio("handler", "minimal"), ratio("full decode", "handler"),
             f"handler and minimal thumbnails byte for byte the same: {same[0]} of {same[1]}"]
    return "\n".join(rows)


def _sizes(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(","))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="timed runs per variant (default 15)")
    parser.add_argument("--megapixels", type=float, default=12.0, help="size of the test photo (default 12)")
    parser.add_argument("--grain", type=float, default=0.25, help="noise in the photo, 0..1 (default 0.25)")
    parser.add_argument("--size", type=_sizes, default=(256,),
                        help="thumbnails' longest edge in px, comma-separated for several (default 256)")
    parser.add_argument("--format", default="webp", choices=sorted(FORMATS), help="output format (default webp)")
    parser.add_argument("--peak-of", choices=sorted(VARIANTS), help=argparse.SUPPRESS)  # child mode
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.peak_of:
        print(measure_peak(args.peak_of, args.input, args.size, args.format))
        return

    data = photo_jpeg(args.megapixels, args.grain)
    with tempfile.TemporaryDirectory() as tmp:
        input_path = Path(tmp) / "photo.jpg"
        input_path.write_bytes(data)
        setup = prepare(Path(tmp), data, args.size, args.format)
        with Image.open(input_path) as image:
            width, height = image.size
        peaks = {name: peak_in_child(name, input_path, args.size, args.format) for name in VARIANTS}
        times, cpu = time_variants(setup, args.runs)
        same = same_thumbnails(setup)
    title = (f"thumbnail bench: {width}x{height} JPEG ({width * height / 1e6:.1f} MP, {len(data) / 1e6:.1f} MB)"
             f" -> {','.join(map(str, args.size))} px {args.format}, {args.runs} runs each")
    print(report(times, cpu, peaks, same, title))


if __name__ == "__main__":
    main()
