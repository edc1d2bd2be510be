"""The built-in ``probe`` function: what a video or audio file is, through ffprobe.

Records duration, container, codecs, resolution, frame rate, bitrate and
audio channels as the job's result, and writes them as ``probe.json``
whose object metadata carries the same figures (``media-duration``,
``media-width`` ...), so a client can read them with a HEAD.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict

from fileproc import Context, function
from workers import media
from workers.media import MediaInfo, probe, spooled_input


class ProbeParams(BaseModel):
    """``probe`` takes no params; any given is a mistake, refused at start."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@function("probe", timeout=60, memory_mb=512, retries=2, params=ProbeParams)
def handler(event: dict[str, Any], context: Context) -> dict[str, Any]:
    """Probe the object; write ``probe.json``; return the figures."""
    with spooled_input(context) as source:
        info = probe(source, context)
    summary = info.summary()
    context.output.put("probe.json", json.dumps(summary, indent=2).encode(), content_type="application/json",
                       metadata=metadata(info))
    context.logger.info("probe %s: %s, %s s", context.input.key, info.container, info.duration)
    return summary


def metadata(info: MediaInfo) -> dict[str, str]:
    """The figures as object metadata (plain ASCII strings; absent figures left out)."""
    found: dict[str, Any] = {"media-container": info.container, "media-duration": info.duration,
                             "media-bitrate": info.bitrate}
    if info.video:
        found |= {"media-video-codec": info.video["codec"], "media-width": info.video["width"],
                  "media-height": info.video["height"], "media-frame-rate": info.video["frame_rate"]}
    if info.audio:
        found |= {"media-audio-codec": info.audio["codec"], "media-audio-channels": info.audio["channels"],
                  "media-sample-rate": info.audio["sample_rate"]}
    return {name: _ascii(value) for name, value in found.items() if value is not None}


def _ascii(value: Any) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return text.encode("ascii", "replace").decode()[:200]


def warm() -> None:
    """Called once in each new runner (see ``fileproc.runtime.pool``), before its first event."""
    media.warm()
