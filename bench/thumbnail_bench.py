"""Thumbnail bench: the handler's reduced-scale JPEG decode against a full decode.

Run from the repository root (``-m`` puts it on ``sys.path``)::

    /work/venv/bin/python -m bench.thumbnail_bench
    /work/venv/bin/python -m bench.thumbnail_bench --runs 30 --size 1024 --format jpeg

Both variants read the same photo-like 12 MP JPEG from a LocalStorage, make
one thumbnail of the same size and format, and write it back:

- ``handler``: the real ``thumbnail`` handler (draft decode at 1/2..1/8 scale,
  then resample);
- ``full decode``: ``Image.open`` + ``load`` at full size, then ``resize``.

Times are medians over ``--runs`` alternating runs in this process. Peak
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
    size: int
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


def prepare(root: Path, data: bytes, size: int, fmt: str) -> Setup:
    storage = LocalStorage(root / "buckets", tmp_dir=root / "tmp")
    storage.ensure_bucket(BUCKET)
    storage.put(BUCKET, "photo.jpg", data, content_type="image/jpeg")
    return Setup(storage, root / "scratch", "photo.jpg", size, fmt)


def run_handler(setup: Setup) -> None:
    event, context = invocation(
        setup.storage, BUCKET, setup.key, setup.scratch, function_name="thumbnail",
        params={"sizes": [setup.size], "format": setup.format, "quality": setup.quality},
    )
    handler(event, context)


def run_full_decode(setup: Setup) -> None:
    """What a thumbnailer without draft mode does: decode every pixel, then shrink."""
    with setup.storage.open(BUCKET, setup.key) as stream:
        image = Image.open(stream)
        image.load()
    scale = setup.size / max(image.size)
    small = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)
    fmt = FORMATS[setup.format]
    buffer = io.BytesIO()
    small.save(buffer, fmt.pillow, quality=setup.quality)
    setup.storage.put(BUCKET, f"baseline/thumb-{setup.size}.{fmt.ext}", buffer.getvalue(),
                      content_type=fmt.content_type)


VARIANTS: dict[str, Callable[[Setup], None]] = {"handler": run_handler, "full decode": run_full_decode}


def time_variants(setup: Setup, runs: int) -> dict[str, list[float]]:
    """Milliseconds per run of each variant, alternating so both see the same machine state."""
    for run in VARIANTS.values():
        run(setup)  # warm-up: plugin imports, encoder set-up, page cache
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(runs):
        for name, run in VARIANTS.items():
            start = time.perf_counter()
            run(setup)
            times[name].append((time.perf_counter() - start) * 1000)
    return times


# --- peak memory, in a child process per variant ----------------------------------------------


def _proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def peak_in_child(variant: str, input_path: Path, size: int, fmt: str) -> float | None:
    """MiB the variant's run added to the child's peak RSS, or None where unmeasurable."""
    command = [sys.executable, "-m", "bench.thumbnail_bench", "--peak-of", variant,
               "--input", str(input_path), "--size", str(size), "--format", fmt]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        print(f"peak memory of {variant!r} not measured: {done.stderr.strip()[-500:]}", file=sys.stderr)
        return None
    value = done.stdout.strip()
    return float(value) if value != "n/a" else None


def measure_peak(variant: str, input_path: Path, size: int, fmt: str) -> str:
    """Child side: run ``variant`` once; return the rise of peak RSS in MiB (or ``n/a``)."""
    with tempfile.TemporaryDirectory() as tmp:
        warm = prepare(Path(tmp) / "warm", photo_jpeg(0.01), size, fmt)
        VARIANTS[variant](warm)  # load plugins and encoders before measuring
        setup = prepare(Path(tmp) / "real", input_path.read_bytes(), size, fmt)
        gc.collect()
        try:
            Path("/proc/self/clear_refs").write_text("5")  # Linux: reset the peak (VmHWM) to now
            before = _proc_status_kib("VmRSS")
        except (OSError, KeyError):
            return "n/a"
        VARIANTS[variant](setup)
        return f"{(_proc_status_kib('VmHWM') - before) / 1024:.1f}"


# --- report -------------------------------------------------------------------------------------


def report(times: dict[str, list[float]], peaks: dict[str, float | None], title: str) -> str:
    rows = [title, f"{'variant':<16}{'median ms':>12}{'min ms':>10}{'peak MiB':>10}"]
    for name, values in times.items():
        peak = peaks[name]
        peak_text = f"{peak:.1f}" if peak is not None else "n/a"
        rows.append(f"{name:<16}{statistics.median(values):>12.1f}{min(values):>10.1f}{peak_text:>10}")
    time_ratio = statistics.median(times["full decode"]) / statistics.median(times["handler"])
    full_peak, handler_peak = peaks["full decode"], peaks["handler"]
    peak_ratio = f"{full_peak / handler_peak:.1f}x" if full_peak and handler_peak else "n/a"
    rows.append(f"{'full / handler':<16}{time_ratio:>11.1f}x{'':>10}{peak_ratio:>10}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="timed runs per variant (default 15)")
    parser.add_argument("--megapixels", type=float, default=12.0, help="size of the test photo (default 12)")
    parser.add_argument("--grain", type=float, default=0.25, help="noise in the photo, 0..1 (default 0.25)")
    parser.add_argument("--size", type=int, default=256, help="thumbnail's longest edge in px (default 256)")
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
        times = time_variants(setup, args.runs)
    title = (f"thumbnail bench: {width}x{height} JPEG ({width * height / 1e6:.1f} MP, {len(data) / 1e6:.1f} MB)"
             f" -> {args.size} px {args.format}, {args.runs} runs each")
    print(report(times, peaks, title))


if __name__ == "__main__":
    main()
