"""The built-in ``transcode`` function: web-ready renditions of a video or audio file, with ffmpeg.

A step names a preset and may tune it::

    [[pipelines.steps]]
    function = "transcode"
    params = { preset = "mp4-720p", crf = 26 }

Presets (names and what they write):

- ``mp4-1080p``, ``mp4-720p``, ``mp4-480p``: H.264 + AAC in MP4 (``1080p.mp4`` ...);
- ``webm-720p``: VP9 + Opus in WebM (``720p.webm``);
- ``mp3``, ``aac``, ``opus``: audio only (``audio.mp3``, ``audio.m4a``, ``audio.opus``);
- ``hls``: a master playlist ``hls/master.m3u8``, one rendition per size in
  ``hls_sizes`` (``hls/720p/index.m3u8`` and its ``seg-00000.ts`` ...).

Sizes are the shorter edge (a portrait phone video at ``mp4-720p`` is
720 wide) and never enlarge: a 640x360 source stays 640x360, and HLS makes
only the renditions no larger than the source (or one at the source's size).

The command is built with ffmpeg-python and run by :mod:`workers.media`
(no shell, under the step's time limit); the input is spooled to disk and
given to ffmpeg as its stdin, read with a demuxer of
:data:`~workers.media.DEMUXERS` and no protocol that could open another file
(a playlist upload is refused, not followed); every output is written to
scratch and uploaded from disk. A single-file preset starts ffmpeg at once
and probes the input meanwhile, and reads an MP4's duration from its header
rather than probing the output: each ffprobe run costs 60-90 ms of process
start with a shared-library build (Debian's loads 215 libraries), which a
step no longer waits for.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import ffmpeg  # ffmpeg-python: builds the command line, never runs a shell
from pydantic import BaseModel, ConfigDict, Field, field_validator

from fileproc import Context, InvalidInput, function
from workers import media
from workers.media import (
    MOV_FAMILY,
    MediaInfo,
    ffmpeg_binary,
    fit_within,
    fit_within_expressions,
    input_options,
    input_url,
    movie_duration,
    probe,
    progress_reporter,
    run_ffmpeg,
    scratch_folder,
    spooled_input,
    started_ffmpeg,
    url,
)

PresetName = Literal["mp4-1080p", "mp4-720p", "mp4-480p", "webm-720p", "mp3", "aac", "opus", "hls"]
X264Speed = Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow"]


@dataclass(frozen=True)
class Preset:
    name: str
    output: str  # the output's name (single-file presets)
    content_type: str
    muxer: str
    video_codec: str | None  # None: audio only
    audio_codec: str
    audio_bitrate: str
    short_edge: int | None = None
    crf: int = 23


PRESETS: dict[str, Preset] = {
    "mp4-1080p": Preset("mp4-1080p", "1080p.mp4", "video/mp4", "mp4", "libx264", "aac", "128k", 1080),
    "mp4-720p": Preset("mp4-720p", "720p.mp4", "video/mp4", "mp4", "libx264", "aac", "128k", 720),
    "mp4-480p": Preset("mp4-480p", "480p.mp4", "video/mp4", "mp4", "libx264", "aac", "96k", 480),
    "webm-720p": Preset("webm-720p", "720p.webm", "video/webm", "webm", "libvpx-vp9", "libopus", "96k", 720, 33),
    "mp3": Preset("mp3", "audio.mp3", "audio/mpeg", "mp3", None, "libmp3lame", "192k"),
    "aac": Preset("aac", "audio.m4a", "audio/mp4", "ipod", None, "aac", "160k"),
    "opus": Preset("opus", "audio.opus", "audio/ogg", "opus", None, "libopus", "96k"),
    "hls": Preset("hls", "hls/master.m3u8", "application/vnd.apple.mpegurl", "hls", "libx264", "aac", "128k"),
}

HLS_MAXRATE_KBPS = {1080: 5000, 720: 2800, 480: 1400, 360: 800}
"""Bitrate cap per HLS rendition (the player picks by it); other sizes are scaled from 720p's."""

_BITRATE = re.compile(r"[1-9][0-9]*(\.[0-9]+)?[kKmM]?")


class TranscodeParams(BaseModel):
    """The params of one ``transcode`` step, checked when the service starts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    preset: PresetName = Field(description="mp4-1080p, mp4-720p, mp4-480p, webm-720p, mp3, aac, opus or hls.")
    crf: int | None = Field(None, ge=0, le=63, description="Video quality (lower is better): default 23 for "
                                                             "H.264 (0-51), 33 for VP9 (0-63).")
    video_bitrate: str | None = Field(None, description="Cap on the video bitrate, e.g. '2500k' or '4M'.")
    audio_bitrate: str | None = Field(None, description="Audio bitrate, e.g. '128k' (default per preset).")
    x264_preset: X264Speed = Field("veryfast", description="H.264 encoder speed against size.")
    hls_sizes: tuple[int, ...] = Field((1080, 720, 480), description="HLS renditions (shorter edge, px).")
    hls_segment_seconds: float = Field(4.0, gt=0, le=60, description="Length of an HLS segment.")

    @field_validator("video_bitrate", "audio_bitrate")
    @classmethod
    def _bitrate(cls, value: str | None) -> str | None:
        if value is not None and not _BITRATE.fullmatch(value):
            raise ValueError(f"a bitrate is a number with an optional k or M, like '2500k', got {value!r}")
        return value

    @field_validator("hls_sizes", mode="before")
    @classmethod
    def _sizes(cls, value: object) -> object:
        if isinstance(value, list | tuple) and value and all(isinstance(v, int) and v >= 16 for v in value):
            return tuple(sorted(set(value), reverse=True))
        raise ValueError(f"hls_sizes must be a non-empty list of pixel sizes (16 or more), got {value!r}")

    @field_validator("crf")
    @classmethod
    def _crf(cls, value: int | None, info: Any) -> int | None:
        preset = info.data.get("preset")
        if value is not None and preset not in ("webm-720p",) and value > 51:
            raise ValueError(f"crf for H.264 is 0-51, got {value}")
        return value


@function("transcode", timeout=1800, memory_mb=1024, retries=1, params=TranscodeParams)
def handler(event: dict[str, Any], context: Context) -> dict[str, Any]:
    """Write the preset's rendition(s); return what was written and the source's figures."""
    params = TranscodeParams.model_validate(context.params)
    preset = PRESETS[params.preset]
    with spooled_input(context) as source, scratch_folder(context, "out") as folder:
        if preset.name == "hls":  # how many renditions depends on the source's size: probe first
            info = _probed(source, preset, context)
            written = _hls(source, info, params, preset, folder, context)
        else:
            info, single = _single(source, params, preset, folder, context)
            written = [single]
    context.report_progress(100.0, final=True)
    context.logger.info("transcode %s (%s): wrote %d objects", context.input.key, preset.name, len(written))
    return {"preset": preset.name, "outputs": written, "source": info.summary()}


def _probed(source: Path, preset: Preset, context: Context) -> MediaInfo:
    """The source's figures; InvalidInput if it lacks the stream the preset needs."""
    info = probe(source, context)
    if preset.video_codec and info.video is None:
        raise InvalidInput(f"preset {preset.name} needs a video stream; this file has audio only")
    if info.audio is None and preset.video_codec is None:
        raise InvalidInput(f"preset {preset.name} needs an audio stream; this file has none")
    return info


def _single(source: Path, params: TranscodeParams, preset: Preset, folder: Path,
            context: Context) -> tuple[MediaInfo, dict[str, Any]]:
    """One output file. ffmpeg starts at once and the source is probed while it runs.

    A process start of a shared-library ffmpeg or ffprobe costs 60-90 ms, so
    the command does not wait for the probe's answers: ffmpeg picks the
    demuxer itself, among the same :data:`~workers.media.DEMUXERS`; the size
    is :func:`~workers.media.fit_within` as scale expressions; audio is mapped
    if there is one. The probe's verdict still comes first: if it refuses the
    input, ffmpeg is killed and the probe's reason is the step's.
    """
    target = folder / Path(preset.output).name
    binary = ffmpeg_binary()
    # Frames that change size mid-stream are scaled to the first one's output size, once (as with a fixed size).
    inp = ffmpeg.input(input_url(binary), **input_options(binary), **{"reinit_filter:v": 0})
    streams: list[Any] = []
    options: dict[str, Any] = {"f": preset.muxer, "map_metadata": -1, "map_chapters": -1,
                               "protocol_whitelist": "file"}
    if preset.video_codec:
        assert preset.short_edge is not None
        streams.append(inp["v:0"].filter("scale", *fit_within_expressions(preset.short_edge)))
        options |= _video_options(preset, params)
        if preset.muxer == "mp4":
            options["movflags"] = "+faststart"
    streams.append(inp["a:0?"])  # the first audio stream, if there is one
    options |= {"c:a": preset.audio_codec, "b:a": params.audio_bitrate or preset.audio_bitrate}
    command = ffmpeg.output(*streams, url(target), **options).compile(cmd=binary)
    with started_ffmpeg(command, context, source) as running:
        info = _probed(source, preset, context)
        running.finish(on_progress=progress_reporter(context, info.duration))
    size = None
    if preset.video_codec:
        assert info.video is not None and preset.short_edge is not None
        size = fit_within(info.video["width"], info.video["height"], preset.short_edge)
    container, out_duration = _written(target, preset, context)
    metadata = {"media-duration": f"{out_duration or 0:g}", "media-container": container}
    if size:
        metadata |= {"media-width": str(size[0]), "media-height": str(size[1])}
    ref = context.output.put(preset.output, target, content_type=preset.content_type, metadata=metadata)
    return info, {"key": ref.key, "bytes": ref.size, "duration": out_duration,
                  "width": size[0] if size else None, "height": size[1] if size else None}


def _written(target: Path, preset: Preset, context: Context) -> tuple[str, float | None]:
    """The container and duration of a file ffmpeg wrote, as ffprobe reports them.

    MP4 and M4A: read from the movie header, without a second ffprobe run;
    other formats (and an MP4 without that header) are probed.
    """
    if preset.muxer in ("mp4", "ipod"):
        found = movie_duration(target)
        if found is not None:
            return MOV_FAMILY, found
    out = probe(target, context)
    return out.container, out.duration


def _video_options(preset: Preset, params: TranscodeParams) -> dict[str, Any]:
    crf = params.crf if params.crf is not None else preset.crf
    options: dict[str, Any] = {"c:v": preset.video_codec, "crf": crf, "pix_fmt": "yuv420p"}
    if preset.video_codec == "libx264":
        options |= {"preset": params.x264_preset}
        if params.video_bitrate:
            options |= {"maxrate": params.video_bitrate, "bufsize": _double(params.video_bitrate)}
    else:  # VP9: constant quality, or constrained quality under a cap
        options |= {"b:v": params.video_bitrate or 0, "row-mt": 1, "deadline": "good", "cpu-used": 4}
    return options


def _hls(source: Path, info: MediaInfo, params: TranscodeParams, preset: Preset, folder: Path,
         context: Context) -> list[dict[str, Any]]:
    """One ffmpeg run: the video decoded once, split into one scaled rendition per size."""
    assert info.video is not None
    width, height = info.video["width"], info.video["height"]
    short = min(width, height)
    heights = [h for h in params.hls_sizes if h <= short] or [short]  # never enlarge
    sizes = [fit_within(width, height, h) for h in heights]
    names = [f"{h}p" for h in heights]
    for name in names:  # ffmpeg cannot make folders behind a file: URL
        (folder / name).mkdir()
    binary = ffmpeg_binary()
    inp = ffmpeg.input(input_url(binary), **input_options(binary, info.demuxer))
    split = inp["v:0"].filter_multi_output("split", len(sizes))
    streams: list[Any] = []
    options: dict[str, Any] = {
        "f": "hls", "c:v": preset.video_codec, "preset": params.x264_preset, "pix_fmt": "yuv420p",
        "crf": params.crf if params.crf is not None else preset.crf,
        # A key frame at every segment boundary, so segments cut where asked and renditions align.
        "force_key_frames": f"expr:gte(t,n_forced*{params.hls_segment_seconds:g})",
        "hls_time": f"{params.hls_segment_seconds:g}", "hls_playlist_type": "vod",
        "hls_flags": "independent_segments", "master_pl_name": "master.m3u8",
        "hls_segment_filename": url(folder) + "/%v/seg-%05d.ts",
        "map_metadata": -1, "protocol_whitelist": "file",
    }
    stream_map = []
    for index, (h, size) in enumerate(zip(heights, sizes, strict=True)):
        streams.append(split[index].filter("scale", *size))
        cap = params.video_bitrate or f"{HLS_MAXRATE_KBPS.get(h, max(200, 2800 * h // 720))}k"
        options |= {f"maxrate:v:{index}": cap, f"bufsize:v:{index}": _double(cap)}
        if info.audio:
            streams.append(inp["a:0"])
            stream_map.append(f"v:{index},a:{index},name:{names[index]}")
        else:
            stream_map.append(f"v:{index},name:{names[index]}")
    if info.audio:
        options |= {"c:a": preset.audio_codec, "b:a": params.audio_bitrate or preset.audio_bitrate}
    options["var_stream_map"] = " ".join(stream_map)
    command = ffmpeg.output(*streams, url(folder) + "/%v/index.m3u8", **options).compile(cmd=binary)
    run_ffmpeg(command, context, source, on_progress=progress_reporter(context, info.duration))
    written: list[dict[str, Any]] = []
    # Segments first, playlists after, the master last: a player that finds the
    # master finds everything it names.
    files = sorted((p for p in folder.rglob("*") if p.is_file()),
                   key=lambda p: (p.name == "master.m3u8", p.suffix == ".m3u8", str(p)))
    for path in files:
        relative = path.relative_to(folder).as_posix()
        content_type = preset.content_type if path.suffix == ".m3u8" else "video/mp2t"
        ref = context.output.put(f"hls/{relative}", path, content_type=content_type)
        written.append({"key": ref.key, "bytes": ref.size})
    if not any(w["key"].endswith("master.m3u8") for w in written):
        raise InvalidInput("ffmpeg wrote no HLS master playlist")
    return written


def _double(bitrate: str) -> str:
    """Twice a bitrate such as '2500k' (the rate-control buffer)."""
    number, unit = (bitrate[:-1], bitrate[-1]) if bitrate[-1] in "kKmM" else (bitrate, "")
    return f"{float(number) * 2:g}{unit}"


def warm() -> None:
    """Called once in each new runner (see ``fileproc.runtime.pool``), before its first event."""
    media.warm()
