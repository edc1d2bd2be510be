"""Real media files for the tests, made by ffmpeg from its test sources (lavfi ``testsrc`` and ``sine``)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any


def make_video(path: Path, *, size: str = "320x240", seconds: float = 1.0, rate: int = 25, audio: bool = True,
               codec: str = "libx264", extra: tuple[str, ...] = ()) -> Path:
    """A clip of ffmpeg's test pattern (and a 440 Hz tone), ``seconds`` long."""
    command = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y",
               "-f", "lavfi", "-i", f"testsrc=size={size}:rate={rate}:duration={seconds}"]
    if audio:
        command += ["-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}", "-c:a", "aac", "-ac", "2"]
    command += ["-c:v", codec, *(["-preset", "ultrafast"] if codec == "libx264" else []),
                "-pix_fmt", "yuv420p", *extra, str(path)]
    subprocess.run(command, check=True, timeout=120)
    return path


def make_audio(path: Path, *, seconds: float = 1.0) -> Path:
    """A stereo 440 Hz tone as WAV."""
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    f"sine=frequency=440:duration={seconds}", "-ac", "2", str(path)], check=True, timeout=60)
    return path


def ffprobe(path: Path | str) -> dict[str, Any]:
    """ffprobe's JSON for a file (or an HLS playlist, with every segment it names)."""
    done = subprocess.run(["ffprobe", "-v", "error", "-show_format", "-show_streams", "-of", "json", str(path)],
                          capture_output=True, text=True, timeout=60, check=True)
    return json.loads(done.stdout)


def streams(info: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [s for s in info["streams"] if s["codec_type"] == kind]


def duration(info: dict[str, Any]) -> float:
    return float(info["format"]["duration"])
