"""The thumbnail's newer params (fit modes, AVIF, metadata, background) and video sources.

Images are made with Pillow, videos with ffmpeg; the handler runs through its
public interface, video posters also through run_step (the real runtime).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from PIL import ExifTags, Image

from fileproc.runtime.runner import run_step
from fileproc.storage.local import LocalStorage
from tests.media import make_audio
from tests.test_runner import make_service, upload
from tests.test_thumbnail import BLUE, RED, UPLOADS, close_to, encode, output, photo, pixel, run
from workers.thumbnail import FORMATS


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    storage = LocalStorage(tmp_path / "buckets", tmp_dir=tmp_path / "tmp")
    storage.ensure_bucket(UPLOADS)
    return storage


def test_cover_fills_a_square_cutting_the_edges(storage, tmp_path: Path) -> None:
    wide = Image.new("RGB", (1200, 600), BLUE)
    wide.paste(RED, (300, 0, 900, 600))  # a red middle between blue sides
    result, keys = run(storage, tmp_path, encode(wide, "PNG"), key="wide.png", sizes=[128, 64], fit="cover",
                       format="png")
    assert [(t["width"], t["height"]) for t in result["thumbnails"]] == [(128, 128), (64, 64)]
    image = output(storage, keys[0])
    assert close_to(pixel(image, 0.02, 0.5), RED) and close_to(pixel(image, 0.98, 0.5), RED)


def test_exact_stretches_to_the_square(storage, tmp_path: Path) -> None:
    _, keys = run(storage, tmp_path, encode(photo((1200, 300)), "JPEG"), sizes=[100], fit="exact")
    assert output(storage, keys[0]).size == (100, 100)


def test_avif_is_written_where_pillow_has_it(storage, tmp_path: Path) -> None:
    assert "avif" in FORMATS  # the Pillow fileproc requires has it: a missing codec must not pass unseen
    _, keys = run(storage, tmp_path, encode(photo(), "JPEG"), sizes=[200], format="avif", quality=60)
    image = output(storage, keys[0])
    assert image.format == "AVIF" and image.size == (200, 133)
    assert storage.head("out", keys[0]).content_type == "image/avif"


def test_metadata_keep_carries_exif_upright(storage, tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "TestCam"
    exif[ExifTags.Base.Orientation] = 6  # stored sideways
    data = encode(photo((600, 400)), "JPEG", exif=exif)
    _, keys = run(storage, tmp_path, data, sizes=[120], format="jpeg", metadata="keep")
    image = output(storage, keys[0])
    assert image.size == (80, 120)  # turned upright
    kept = image.getexif()
    assert kept[ExifTags.Base.Make] == "TestCam" and kept[ExifTags.Base.Orientation] == 1
    _, keys = run(storage, tmp_path, data, key="again.jpg", sizes=[120], format="jpeg")  # default: strip
    assert not output(storage, keys[0]).getexif()


def test_background_colour_behind_transparency_in_jpeg(storage, tmp_path: Path) -> None:
    clear = Image.new("RGBA", (300, 300), (0, 0, 0, 0))
    _, keys = run(storage, tmp_path, encode(clear, "PNG"), key="clear.png", sizes=[50], format="jpeg",
                  background="#204080")
    assert close_to(pixel(output(storage, keys[0]), 0.5, 0.5), (0x20, 0x40, 0x80), tolerance=8)


def test_each_output_carries_its_size_and_source(storage, tmp_path: Path) -> None:
    _, keys = run(storage, tmp_path, encode(photo(), "JPEG"), sizes=[64])
    meta = storage.head("out", keys[0]).metadata
    assert (meta["width"], meta["height"]) == ("64", "43")
    assert meta["source-bucket"] == "uploads" and meta["source-key"] == "photo.jpg" and meta["source-etag"]


@pytest.mark.parametrize("params, problem", [({"fit": "fill"}, "fit"), ({"background": "blurple"}, "background"),
                                             ({"metadata": "some"}, "metadata")])
def test_bad_new_params_are_refused(tmp_path: Path, params: dict, problem: str) -> None:
    from fileproc.errors import ConfigError

    with pytest.raises(ConfigError, match=problem):
        make_service(tmp_path, [{"function": "thumbnail", "params": params}])


# --- video sources -------------------------------------------------------------------------


def black_then_red_clip(path: Path) -> bytes:
    """A 2 s clip whose first 0.3 s are black, then red: a first-frame poster would be black."""
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    "color=c=red:s=320x180:r=25:d=2", "-vf", "drawbox=c=black:t=fill:enable='lt(t,0.3)'",
                    "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(path)],
                   check=True, timeout=60)
    return path.read_bytes()


def test_a_video_gets_a_poster_frame_from_inside_the_clip(tmp_path: Path) -> None:
    service = make_service(tmp_path, [{"function": "thumbnail", "params": {"sizes": [160, 64], "format": "png"}}])
    job = upload(service, "clips/intro.mp4", black_then_red_clip(tmp_path / "clip.mp4"))
    assert run_step(service, job.id, 0, "w").status == "succeeded"
    done = service.db.get_job(job.id)
    assert sorted(o.key for o in done.outputs) == ["clips/intro.mp4/thumb-160.png", "clips/intro.mp4/thumb-64.png"]
    poster = Image.open(service.settings.buckets_dir / "out" / "clips/intro.mp4/thumb-160.png")
    assert poster.size == (160, 90)
    assert close_to(pixel(poster, 0.5, 0.5), RED)  # not the black first frame


def test_audio_only_media_has_no_picture(tmp_path: Path) -> None:
    service = make_service(tmp_path, [{"function": "thumbnail"}])
    job = upload(service, "tone.jpg", make_audio(tmp_path / "tone.wav").read_bytes())
    run_step(service, job.id, 0, "w")
    done = service.db.get_job(job.id)
    assert done.status == "failed" and "without pictures" in done.error


# --- animations ----------------------------------------------------------------------------------


def _gif(colours: list[tuple[int, int, int]], size: tuple[int, int] = (300, 200)) -> bytes:
    import io

    frames = [Image.new("RGB", size, colour) for colour in colours]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:],
                   duration=[100 * (n + 1) for n in range(len(frames))], loop=0)
    return buffer.getvalue()


def test_an_animated_gif_becomes_an_animated_thumbnail_when_asked(storage, tmp_path: Path) -> None:
    result, keys = run(storage, tmp_path, _gif([RED, BLUE, (0, 160, 0)]), key="wave.gif", sizes=[120, 60],
                       format="webp", animated=True)
    assert result["frames"] == 3 and [t["frames"] for t in result["thumbnails"]] == [3, 3]
    first = output(storage, keys[0])
    assert first.size == (120, 80) and getattr(first, "n_frames", 1) == 3
    colours = []
    for index in range(3):
        first.seek(index)
        colours.append(pixel(first, 0.5, 0.5))
    assert close_to(colours[0], RED) and close_to(colours[1], BLUE) and close_to(colours[2], (0, 160, 0))
    first.seek(1)
    first.load()
    assert first.info["duration"] == 200  # the frames keep their timing
    assert output(storage, keys[1]).size == (60, 40)


def test_an_animated_gif_gives_its_first_frame_by_default(storage, tmp_path: Path) -> None:
    result, keys = run(storage, tmp_path, _gif([RED, BLUE]), key="wave.gif", sizes=[120], format="webp")
    image = output(storage, keys[0])
    assert getattr(image, "n_frames", 1) == 1 and close_to(pixel(image, 0.5, 0.5), RED)
    assert "frames" not in result


def test_an_animation_past_max_frames_fails_with_the_reason(storage, tmp_path: Path) -> None:
    from fileproc import InvalidInput

    with pytest.raises(InvalidInput, match="4 frames, more than max_frames"):
        run(storage, tmp_path, _gif([RED, BLUE, RED, BLUE]), key="long.gif", sizes=[64], animated=True,
            max_frames=3)


def test_animated_thumbnails_need_a_format_that_animates(storage, tmp_path: Path) -> None:
    from fileproc import PermanentError

    with pytest.raises(PermanentError, match="animated thumbnails need format webp or png"):
        run(storage, tmp_path, _gif([RED, BLUE]), key="wave.gif", sizes=[64], animated=True, format="jpeg")


# --- the real-world kinds, through the runtime ------------------------------------------------------------


def test_real_world_images_good_and_bad_through_the_runtime(tmp_path: Path) -> None:
    # The kinds the handler tests above take one by one, each as a job run by run_step (claim,
    # warm runner, recorded outputs): what a worker does with an upload.
    from PIL import ExifTags

    sideways = photo((800, 400))
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    cmyk = Image.new("CMYK", (600, 400), (0, 255, 255, 0))
    palette = Image.new("P", (300, 200), 0)
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.paste(1, (150, 0, 300, 200))
    good = {
        "sideways.jpg": encode(sideways, "JPEG", exif=exif.tobytes()),
        "progressive.jpg": encode(photo((1000, 700)), "JPEG", progressive=True),
        "cmyk.jpg": encode(cmyk, "JPEG"),
        "sixteen.png": encode(Image.new("I;16", (300, 300), 40000), "PNG"),
        "palette.png": encode(palette, "PNG", transparency=0),
        "wave.gif": _gif([RED, BLUE]),
    }
    bad = {"truncated.jpg": encode(photo(), "JPEG")[:2000], "empty.jpg": b"", "notes.jpg": b"just some text\n"}
    service = make_service(tmp_path, [{"function": "thumbnail", "params": {"sizes": [128], "format": "png"}}])
    outcomes = {}
    for key, data in {**good, **bad}.items():
        job = upload(service, key, data)
        run_step(service, job.id, 0, "w")
        done = service.db.get_job(job.id)
        assert done is not None
        outcomes[key] = done
    for key in good:
        assert outcomes[key].status == "succeeded", (key, outcomes[key].error)
        (made,) = outcomes[key].outputs
        assert max(Image.open(service.storage.open("out", made.key)).size) == 128, key
    upright = Image.open(service.storage.open("out", outcomes["sideways.jpg"].outputs[0].key))
    assert upright.height > upright.width  # turned as the camera said
    for key in bad:
        assert outcomes[key].status == "failed" and "not a readable image" in (outcomes[key].error or ""), \
            (key, outcomes[key].error)
        assert [a.status for a in outcomes[key].attempts] == ["failed"]  # not retried: the same bytes fail again
