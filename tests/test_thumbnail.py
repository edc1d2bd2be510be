"""The built-in ``thumbnail`` function, called through the public function interface.

Every test stores a real image (made with Pillow here, no fixtures on disk) in
a real LocalStorage, runs the handler with the event and context the runtime
would build, and decodes what it wrote.
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from pathlib import Path
from typing import IO, Any

import pytest
from PIL import ExifTags, Image, ImageCms, ImageDraw, ImageFile

from fileproc import InvalidInput, PermanentError
from fileproc.functions.registry import Registry
from fileproc.storage import Storage
from fileproc.storage.local import LocalStorage
from tests.helpers import OUTPUT_BUCKET, invocation, read_object
from workers.thumbnail import handler

UPLOADS = "uploads"
RED = (255, 0, 0)
GREEN = (0, 255, 0)
BLUE = (0, 0, 255)


# --- building inputs ------------------------------------------------------------------------


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def photo(size: tuple[int, int] = (1200, 800), mode: str = "RGB") -> Image.Image:
    """A picture with a gradient and a red block in its stored top-left corner."""
    image = Image.linear_gradient("L").resize(size).convert(mode)
    ImageDraw.Draw(image).rectangle((0, 0, size[0] // 4, size[1] // 4), fill=RED if mode == "RGB" else None)
    return image


def png_declaring_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height``: a decompression bomb's shape."""
    data = bytearray(encode(Image.new("L", (1, 1)), "PNG"))
    # Signature (8 bytes), then IHDR: length (4), type (4), width and height first in its 13 data bytes.
    struct.pack_into(">II", data, 16, width, height)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    return bytes(data)


# --- running the handler --------------------------------------------------------------------


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    storage = LocalStorage(tmp_path / "buckets", tmp_dir=tmp_path / "tmp")
    storage.ensure_bucket(UPLOADS)
    return storage


def run(
    storage: Storage, tmp_path: Path, data: bytes, key: str = "photo.jpg", **params: Any
) -> tuple[dict[str, Any], list[str]]:
    """Store ``data`` under ``key``, run the thumbnail handler; its summary and the keys it wrote."""
    storage.put(UPLOADS, key, data)
    event, context = invocation(
        storage, UPLOADS, key, tmp_path / "scratch", function_name="thumbnail",
        params=params, out_prefix=f"thumbs/{key}/",
    )
    result = handler(event, context)
    return result, [ref.key for ref in context.output.written]


def output(storage: Storage, key: str) -> Image.Image:
    image = Image.open(io.BytesIO(read_object(storage, OUTPUT_BUCKET, key)))
    image.load()
    return image


def pixel(image: Image.Image, x: float, y: float) -> tuple[int, ...]:
    """The RGB(A) colour at a fraction (x, y) of the image's width and height."""
    rgb = image.convert("RGBA" if "A" in image.mode else "RGB")
    return rgb.getpixel((int(x * (image.width - 1)), int(y * (image.height - 1))))  # type: ignore[return-value]


def close_to(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 40) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


# --- sizes and formats ----------------------------------------------------------------------


def test_registered_as_a_builtin_with_its_defaults() -> None:
    registry = Registry()
    registry.load_entry_points()  # the built-ins register like any installed package
    spec = registry.get("thumbnail")
    assert (spec.handler, spec.queue, spec.timeout, spec.memory_mb, spec.retries) == (
        handler, "thumbnail", 60, 1024, 2
    )


def test_writes_one_thumbnail_per_size_fitting_the_longest_edge(storage: LocalStorage, tmp_path: Path) -> None:
    result, keys = run(storage, tmp_path, encode(photo((1200, 800)), "JPEG"), sizes=[64, 256, 1024])

    assert keys == [f"thumbs/photo.jpg/thumb-{size}.webp" for size in (1024, 256, 64)]
    assert [(t["size"], t["width"], t["height"]) for t in result["thumbnails"]] == [
        (64, 64, 43), (256, 256, 171), (1024, 1024, 683)
    ]
    assert result["source"] == {"width": 1200, "height": 800}
    for thumb in result["thumbnails"]:
        assert output(storage, thumb["key"]).size == (thumb["width"], thumb["height"])
        assert storage.head(OUTPUT_BUCKET, thumb["key"]).content_type == "image/webp"


def test_default_is_one_256px_webp(storage: LocalStorage, tmp_path: Path) -> None:
    _, keys = run(storage, tmp_path, encode(photo((800, 1200)), "JPEG"))

    assert keys == ["thumbs/photo.jpg/thumb-256.webp"]
    assert output(storage, keys[0]).size == (171, 256)


def test_a_repeated_size_is_written_once(storage: LocalStorage, tmp_path: Path) -> None:
    _, keys = run(storage, tmp_path, encode(photo(), "JPEG"), sizes=[64, 64])

    assert keys == ["thumbs/photo.jpg/thumb-64.webp"]


def test_never_enlarges_a_small_image(storage: LocalStorage, tmp_path: Path) -> None:
    _, keys = run(storage, tmp_path, encode(photo((100, 50)), "PNG"), key="small.png", sizes=[256, 64])

    assert [output(storage, key).size for key in keys] == [(100, 50), (64, 32)]


@pytest.mark.parametrize(
    ("param", "pillow_format", "ext", "content_type"),
    [
        ("jpeg", "JPEG", "jpg", "image/jpeg"),
        ("jpg", "JPEG", "jpg", "image/jpeg"),
        ("JPEG", "JPEG", "jpg", "image/jpeg"),
        ("png", "PNG", "png", "image/png"),
        ("webp", "WEBP", "webp", "image/webp"),
    ],
)
def test_each_format_decodes_as_that_format(
    storage: LocalStorage, tmp_path: Path, param: str, pillow_format: str, ext: str, content_type: str
) -> None:
    _, keys = run(storage, tmp_path, encode(photo(), "JPEG"), format=param, sizes=[128])

    assert keys == [f"thumbs/photo.jpg/thumb-128.{ext}"]
    thumb = output(storage, keys[0])
    assert thumb.format == pillow_format
    assert storage.head(OUTPUT_BUCKET, keys[0]).content_type == content_type
    assert close_to(pixel(thumb, 0.05, 0.05), RED)


def test_same_input_twice_gives_the_same_keys_and_bytes(storage: LocalStorage, tmp_path: Path) -> None:
    data = encode(photo(), "JPEG")
    _, first = run(storage, tmp_path, data, sizes=[64, 300], format="jpeg")
    first_bytes = [read_object(storage, OUTPUT_BUCKET, key) for key in first]
    _, second = run(storage, tmp_path, data, sizes=[64, 300], format="jpeg")

    assert second == first
    assert [read_object(storage, OUTPUT_BUCKET, key) for key in second] == first_bytes


# --- orientation, modes and colour ----------------------------------------------------------


def test_exif_orientation_turns_a_sideways_photo_upright(storage: LocalStorage, tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # stored landscape; the camera was turned 90° clockwise
    _, keys = run(storage, tmp_path, encode(photo((600, 400)), "JPEG", exif=exif), format="png")

    thumb = output(storage, keys[0])
    assert thumb.size == (171, 256)
    # The stored top-left corner is the displayed top-right one.
    assert close_to(pixel(thumb, 0.95, 0.05), RED)
    assert not close_to(pixel(thumb, 0.05, 0.05), RED)


def test_transparent_png_to_jpeg_is_flattened_onto_white(storage: LocalStorage, tmp_path: Path) -> None:
    image = Image.new("RGBA", (400, 400), (0, 0, 0, 0))
    ImageDraw.Draw(image).rectangle((0, 0, 199, 399), fill=(*RED, 255))
    _, keys = run(storage, tmp_path, encode(image, "PNG"), key="logo.png", format="jpeg", sizes=[100])

    thumb = output(storage, keys[0])
    assert thumb.mode == "RGB"
    assert close_to(pixel(thumb, 0.1, 0.5), RED)
    assert close_to(pixel(thumb, 0.9, 0.5), (255, 255, 255), tolerance=5)


@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_transparency_is_kept_where_the_format_has_alpha(storage: LocalStorage, tmp_path: Path, fmt: str) -> None:
    image = Image.new("LA", (400, 400), (0, 0))
    ImageDraw.Draw(image).rectangle((0, 0, 199, 399), fill=(200, 255))
    _, keys = run(storage, tmp_path, encode(image, "PNG"), key="mask.png", format=fmt, sizes=[100])

    thumb = output(storage, keys[0])
    assert pixel(thumb, 0.1, 0.5)[-1] == 255
    assert pixel(thumb, 0.9, 0.5)[-1] == 0
    assert close_to(pixel(thumb, 0.1, 0.5)[:3], (200, 200, 200), tolerance=5)


def test_cmyk_jpeg_becomes_rgb(storage: LocalStorage, tmp_path: Path) -> None:
    image = Image.new("CMYK", (600, 400), (0, 255, 255, 0))  # full magenta + yellow: red
    _, keys = run(storage, tmp_path, encode(image, "JPEG"), key="print.jpg", format="webp", sizes=[100])

    thumb = output(storage, keys[0])
    assert thumb.mode == "RGB"
    assert close_to(pixel(thumb, 0.5, 0.5), RED)


def test_cmyk_with_an_unusable_profile_is_converted_plainly(
    storage: LocalStorage, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()  # an RGB profile on CMYK pixels
    image = Image.new("CMYK", (600, 400), (0, 255, 255, 0))
    _, keys = run(storage, tmp_path, encode(image, "JPEG", icc_profile=srgb), key="print.jpg", sizes=[100])

    thumb = output(storage, keys[0])
    assert close_to(pixel(thumb, 0.5, 0.5), RED)
    assert "icc_profile" not in thumb.info  # it described the CMYK pixels, not these
    assert "ignoring unusable ICC profile" in caplog.text


def test_animated_gif_gives_its_first_frame(storage: LocalStorage, tmp_path: Path) -> None:
    frames = [Image.new("RGB", (300, 200), color).convert("P") for color in (RED, GREEN, BLUE)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    _, keys = run(storage, tmp_path, data, key="anim.gif", sizes=[90])

    thumb = output(storage, keys[0])
    assert getattr(thumb, "n_frames", 1) == 1
    assert thumb.size == (90, 60)
    assert close_to(pixel(thumb, 0.5, 0.5), RED)


def test_palette_transparency_survives_to_png(storage: LocalStorage, tmp_path: Path) -> None:
    image = Image.new("P", (200, 200), 0)
    image.putpalette([*RED, *GREEN])
    ImageDraw.Draw(image).rectangle((100, 0, 199, 199), fill=1)
    _, keys = run(storage, tmp_path, encode(image, "GIF", transparency=1), key="icon.gif", format="png", sizes=[50])

    thumb = output(storage, keys[0])
    assert close_to(pixel(thumb, 0.1, 0.5), (*RED, 255))
    assert pixel(thumb, 0.9, 0.5)[-1] == 0


@pytest.mark.parametrize(("fmt", "mode"), [("png", "L"), ("jpeg", "L"), ("webp", "RGB")])
def test_16_bit_grayscale_is_scaled_not_clipped(storage: LocalStorage, tmp_path: Path, fmt: str, mode: str) -> None:
    image = Image.new("I;16", (300, 300), 40000)  # 61% grey; a plain conversion would clip it to white
    _, keys = run(storage, tmp_path, encode(image, "PNG"), key="scan.png", format=fmt, sizes=[64])

    thumb = output(storage, keys[0])
    assert thumb.mode == mode
    assert close_to(pixel(thumb, 0.5, 0.5), (156, 156, 156), tolerance=3)


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp"])
def test_icc_profile_is_kept(storage: LocalStorage, tmp_path: Path, fmt: str) -> None:
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    _, keys = run(storage, tmp_path, encode(photo(), "JPEG", icc_profile=profile), format=fmt, sizes=[64])

    assert output(storage, keys[0]).info.get("icc_profile") == profile


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp"])
def test_no_exif_or_gps_reaches_the_output(storage: LocalStorage, tmp_path: Path, fmt: str) -> None:
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "LeakyCam"
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitudeRef] = "N"
    gps[ExifTags.GPS.GPSLatitude] = (52.0, 31.0, 12.0)
    source = encode(photo(), "JPEG", exif=exif, comment=b"LeakyCam comment")
    assert b"LeakyCam" in source
    _, keys = run(storage, tmp_path, source, format=fmt, sizes=[64])

    data = read_object(storage, OUTPUT_BUCKET, keys[0])
    thumb = output(storage, keys[0])
    assert b"LeakyCam" not in data
    assert "exif" not in thumb.info
    assert ExifTags.IFD.GPSInfo not in thumb.getexif()


# --- inputs that are not images ---------------------------------------------------------------


def _jpeg() -> bytes:
    return encode(photo(), "JPEG")


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("cut in half", _jpeg()[: len(_jpeg()) // 2]),
        ("missing its last bytes", _jpeg()[:-16]),
        ("random bytes", random.Random(0).randbytes(4096)),
        ("text", b"hello, I am not a picture\n" * 20),
        ("empty", b""),
    ],
)
def test_unreadable_image_fails_as_invalid_input(
    storage: LocalStorage, tmp_path: Path, name: str, data: bytes
) -> None:
    with pytest.raises(InvalidInput, match=r"not a readable image: .+"):
        run(storage, tmp_path, data, key="broken.jpg")
    assert list(storage.list(OUTPUT_BUCKET)) == []


@pytest.mark.parametrize("edge", [10_000, 20_000])  # over Pillow's limit, and over twice it
def test_decompression_bomb_fails_as_invalid_input(storage: LocalStorage, tmp_path: Path, edge: int) -> None:
    with pytest.raises(InvalidInput, match="decompression bomb"):
        run(storage, tmp_path, png_declaring_size(edge, edge), key="bomb.png")


def test_pillow_is_left_rejecting_truncated_images() -> None:
    import workers.thumbnail  # noqa: F401

    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_refuses_to_run_if_truncated_images_were_allowed(
    storage: LocalStorage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(PermanentError, match="LOAD_TRUNCATED_IMAGES"):
        run(storage, tmp_path, _jpeg())


# --- params ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"sizes": []}, "sizes must be a non-empty list"),
        ({"sizes": 256}, "sizes must be a non-empty list"),
        ({"sizes": [0]}, "positive integers"),
        ({"sizes": [128, "big"]}, "positive integers"),
        ({"sizes": [True]}, "positive integers"),
        ({"format": "gif"}, "format must be one of"),
        ({"format": None}, "format must be one of"),
        ({"quality": 0}, "quality must be an integer from 1 to 100"),
        ({"quality": 101}, "quality must be an integer from 1 to 100"),
        ({"quality": "high"}, "quality must be an integer from 1 to 100"),
        ({"size": [128]}, "unknown param"),
    ],
)
def test_bad_params_fail_as_a_configuration_error(
    storage: LocalStorage, tmp_path: Path, params: dict[str, Any], message: str
) -> None:
    with pytest.raises(PermanentError, match=message):
        run(storage, tmp_path, _jpeg(), **params)
    assert list(storage.list(OUTPUT_BUCKET)) == []


# --- streams --------------------------------------------------------------------------------


class _Unseekable(io.RawIOBase):
    """A forward-only stream, like an HTTP response body from S3."""

    def __init__(self, inner: IO[bytes]) -> None:
        self._inner = inner

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._inner.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._inner.close()
        super().close()


class StreamingStorage(LocalStorage):
    """LocalStorage whose ``open`` streams like a remote store: no seeking."""

    def open(self, bucket: str, key: str) -> IO[bytes]:
        return io.BufferedReader(_Unseekable(super().open(bucket, key)))


def test_reads_a_stream_that_cannot_seek(tmp_path: Path) -> None:
    storage = StreamingStorage(tmp_path / "buckets", tmp_dir=tmp_path / "tmp")
    storage.ensure_bucket(UPLOADS)
    result, keys = run(storage, tmp_path, encode(photo(), "JPEG"), sizes=[64])
    with storage.open(UPLOADS, "photo.jpg") as stream:
        assert not stream.seekable()

    assert output(storage, keys[0]).size == (64, 43)
    assert result["thumbnails"][0]["key"] == keys[0]
