"""The built-in ``thumbnail`` function: one small image per requested size.

Params (``context.params``)::

    sizes:    [256, 1024]  # longest edge in pixels (fit), or the square's edge (cover, exact); default [256]
    format:   webp         # jpeg (or jpg) | png | webp | avif (where Pillow has it); default webp
    quality:  85           # 1-100, for jpeg, webp and avif; default 85
    fit:      fit          # fit (inside the box) | cover (fill the square, centre crop) | exact (stretch)
    metadata: strip        # strip | keep (EXIF, orientation reset to upright); the ICC profile is always kept
    background: white      # what transparent pixels become in a JPEG (any CSS colour: "#202020", "black")
    poster_seconds: 1.0    # for a video source: the frame this far in (at most mid-clip) is the picture
    animated: false        # animated GIF/WebP/PNG sources: an animated thumbnail (webp or png) instead of
                           # the first frame
    max_frames: 300        # an animation with more frames fails (animated only)

Each size becomes the output ``thumb-{size}.{ext}`` (for example
``thumb-256.webp``), so the same input always yields the same keys. A
thumbnail keeps the aspect ratio, is never larger than the source, is turned
the way the camera's EXIF orientation says, and carries no metadata except the
ICC colour profile (no EXIF, so no GPS position leaks).

The params are a pydantic model (:class:`ThumbnailParams`), so a mistake in
a pipeline's params stops the service at start, naming the field. Called
directly with bad params, the handler fails as a configuration error
(``PermanentError``); an input that is not a readable image (corrupt, truncated, unknown format, a
decompression bomb) fails it with ``InvalidInput``.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import shutil
import struct
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any, Literal, TypeGuard

from PIL import ExifTags, Image, ImageCms, ImageColor, ImageFile, ImageSequence, UnidentifiedImageError, features
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fileproc import Context, InvalidInput, PermanentError, function

DEFAULT_SIZES = (256,)
DEFAULT_FORMAT = "webp"
DEFAULT_QUALITY = 85

REDUCING_GAP = 2.0
"""JPEGs are decoded at the smallest 1/2..1/8 scale still this many times the
largest thumbnail, then resampled: close to a full-quality resize, a fraction
of the time and memory of a full decode."""

INPUT_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP", "ICO", "AVIF")
"""What Pillow may open (JPEG includes MPO, the multi-picture JPEG of many
cameras). A closed list: formats such as EPS hand the bytes to external
programs (Ghostscript), which an upload should never reach."""

SPOOL_IN_MEMORY = 16 * 1024 * 1024
"""A non-seekable input stream is copied to a spool file; up to this many
bytes stay in memory, the rest goes to the scratch directory."""

_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error)
"""What Pillow raises on a corrupt or truncated file (it has no single base class)."""

_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
"""EXIF orientation -> the transposition that shows the image upright (as in
``PIL.ImageOps.exif_transpose``)."""


@dataclass(frozen=True)
class OutputFormat:
    """How one output format is written, and which pixels it can hold."""

    pillow: str
    ext: str
    content_type: str
    alpha: bool
    grayscale: bool
    lossy: bool
    animates: bool = False  # Pillow writes several frames to it (save_all)


FORMATS = {
    "jpeg": OutputFormat("JPEG", "jpg", "image/jpeg", alpha=False, grayscale=True, lossy=True),
    "png": OutputFormat("PNG", "png", "image/png", alpha=True, grayscale=True, lossy=False, animates=True),
    "webp": OutputFormat("WEBP", "webp", "image/webp", alpha=True, grayscale=False, lossy=True, animates=True),
}
if features.check("avif"):  # Pillow 11.2+ wheels carry libavif
    FORMATS["avif"] = OutputFormat("AVIF", "avif", "image/avif", alpha=True, grayscale=False, lossy=True)
_FORMAT_ALIASES = {"jpg": "jpeg"}


class ThumbnailParams(BaseModel):
    """The params of one step, checked when the service starts (and by ``fileproc doctor``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sizes: tuple[int, ...] = Field(DEFAULT_SIZES, description="Longest edge of each thumbnail, in pixels.")
    format: str = Field(DEFAULT_FORMAT, description="jpeg (or jpg), png or webp.")
    quality: int = Field(DEFAULT_QUALITY, description="1-100, for jpeg, webp and avif.")
    fit: Literal["fit", "cover", "exact"] = Field("fit", description="fit inside the box, cover it (centre "
                                                                        "crop) or stretch to it exactly.")
    metadata: Literal["strip", "keep"] = Field("strip", description="Keep the source's EXIF, or strip it.")
    background: str = Field("white", description="Colour behind transparent pixels in a JPEG.")
    poster_seconds: float = Field(1.0, ge=0, description="Video sources: where the poster frame is taken.")
    animated: bool = Field(False, description="Animated sources: an animated thumbnail (webp or png), "
                                              "not the first frame.")
    max_frames: int = Field(300, ge=1, description="Animated: an animation with more frames fails.")

    @model_validator(mode="after")
    def _animation_needs_a_format_that_animates(self) -> ThumbnailParams:
        if self.animated and not self.output_format.animates:
            raise ValueError(f"animated thumbnails need format webp or png, not {self.format}")
        return self

    @field_validator("background")
    @classmethod
    def _background(cls, value: str) -> str:
        try:
            ImageColor.getrgb(value)
        except ValueError:
            raise ValueError(f"background must be a colour such as 'white' or '#202020', got {value!r}") from None
        return value

    @field_validator("sizes", mode="before")
    @classmethod
    def _sizes(cls, value: object) -> tuple[int, ...]:
        if not isinstance(value, list | tuple) or not value:
            raise ValueError(f"sizes must be a non-empty list of pixel sizes, got {value!r}")
        bad = [v for v in value if not _is_int(v) or v < 1]
        if bad:
            raise ValueError(f"sizes must be positive integers (longest edge in px), got {bad!r}")
        return tuple(dict.fromkeys(value))  # drop repeats: each size is one output key

    @field_validator("format", mode="before")
    @classmethod
    def _format(cls, value: object) -> str:
        if isinstance(value, str):
            name = _FORMAT_ALIASES.get(value.lower(), value.lower())
            if name in FORMATS:
                return name
        raise ValueError(f"format must be one of jpeg, jpg, {', '.join(list(FORMATS)[1:])}, got {value!r}")

    @field_validator("quality", mode="before")
    @classmethod
    def _quality(cls, value: object) -> int:
        if _is_int(value) and 1 <= value <= 100:
            return value
        raise ValueError(f"quality must be an integer from 1 to 100, got {value!r}")

    @property
    def output_format(self) -> OutputFormat:
        return FORMATS[self.format]


@function("thumbnail", timeout=60, memory_mb=1024, retries=2, params=ThumbnailParams)
def handler(event: dict[str, Any], context: Context) -> dict[str, Any]:
    """Write ``thumb-{size}.{ext}`` for each requested size; return what was written."""
    params = parse_params(context.params)
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # A process-wide Pillow switch some other code may have flipped: with it
        # a half-uploaded JPEG would pass as a valid image with a grey bottom.
        raise PermanentError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set in this worker; thumbnail refuses to run")
    try:
        with _seekable_input(context) as source:
            if params.animated:
                animation = _animation(source, max(params.sizes), params)
                if animation is not None:
                    return _write_animated(animation, params, context)
            image, source_size, orientation = _decode(source, max(params.sizes), context)
    except InvalidInput as not_an_image:
        if "not a recognised image format" not in str(not_an_image):
            raise
        # Perhaps a video: its poster frame is the picture. If it is no media either, the image error stands.
        image, source_size, orientation = _poster(context, params, max(params.sizes), not_an_image)
    icc = image.info.get("icc_profile") or None
    exif = _kept_exif(image) if params.metadata == "keep" else None
    image.info = {}  # no metadata of the source (EXIF, XMP, comments) may reach an output unless asked
    if params.fit == "cover":
        image = _centre_square(image)
    written: dict[int, dict[str, Any]] = {}
    for size in sorted(params.sizes, reverse=True):
        # Largest first, each from the one before: the big decoded image is
        # resampled once, not once per size. In place: `image` is ours.
        if params.fit == "exact":
            image = image.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=REDUCING_GAP)
        else:
            image.thumbnail((size, size), Image.Resampling.BICUBIC, reducing_gap=REDUCING_GAP)  # never enlarges
        written[size] = _write_thumbnail(image, size, orientation, icc, exif, params, context)
    thumbnails = [written[size] for size in params.sizes]
    context.logger.info(
        "thumbnail %s (%dx%d): wrote %s", context.input.key, *source_size, ", ".join(t["key"] for t in thumbnails)
    )
    return {
        "format": params.output_format.ext,
        "source": {"width": source_size[0], "height": source_size[1]},
        "thumbnails": thumbnails,
    }


def parse_params(params: Mapping[str, Any]) -> ThumbnailParams:
    """The step's params as a model.

    The service validated them at start; a direct call (a test, another
    function) may pass anything, and a mistake there is still a
    configuration error, so PermanentError.
    """
    try:
        return ThumbnailParams.model_validate(dict(params))
    except ValidationError as exc:
        problems = []
        for item in exc.errors():
            where = ".".join(str(part) for part in item["loc"])
            if item["type"] == "extra_forbidden":
                problems.append(f"unknown param {where} (known: {', '.join(ThumbnailParams.model_fields)})")
            else:
                problems.append(str(item["msg"]).removeprefix("Value error, "))
        raise PermanentError(f"thumbnail: {'; '.join(problems)}") from exc


def _is_int(value: object) -> TypeGuard[int]:
    # bool is a subclass of int, but `sizes: [true]` is a typo, not a size.
    return isinstance(value, int) and not isinstance(value, bool)


@contextlib.contextmanager
def _seekable_input(context: Context) -> Iterator[IO[bytes]]:
    """The input as a seekable file: the stream itself, or a spooled copy of it.

    Pillow seeks while identifying a file. A remote stream cannot seek, so it
    is copied once to a spool file: one read of the object (not a second
    download through ``context.input.path``), and no whole-file buffer in memory.
    """
    with context.input.open() as stream:
        if stream.seekable():
            yield stream
            return
        with tempfile.SpooledTemporaryFile(SPOOL_IN_MEMORY, dir=str(context.scratch_dir)) as spool:
            shutil.copyfileobj(stream, spool)
            spool.seek(0)
            yield spool


def _decode(source: IO[bytes], largest: int, context: Context) -> tuple[Image.Image, tuple[int, int], int]:
    """Decode just enough of ``source``: (image in a resizable mode, original size, EXIF orientation)."""
    # catch_warnings is process-wide state: fine in Celery's prefork workers (one
    # task per process); under a threads pool a racing task could miss the filter.
    with warnings.catch_warnings():
        # Pillow only warns between 1x and 2x its pixel limit; both are bombs to us.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(source, formats=INPUT_FORMATS)
            original_size = image.size
            # draft() is what makes a 12 MP JPEG cheap: libjpeg decodes at 1/2..1/8
            # scale. Must come before load(); other formats ignore it.
            image.draft(None, (int(largest * REDUCING_GAP), int(largest * REDUCING_GAP)))
            image.load()  # decode now, while `source` is open; a truncated file fails here
            orientation = _orientation(image, context)
            return _resizable(image), original_size, orientation
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise InvalidInput(f"image too large to process safely (possible decompression bomb): {exc}") from exc
        except UnidentifiedImageError as exc:
            known = ", ".join(INPUT_FORMATS)
            raise InvalidInput(f"not a readable image: not a recognised image format (known: {known})") from exc
        except _DECODE_ERRORS as exc:
            raise InvalidInput(f"not a readable image: {exc}") from exc


ANIMATION_PIXELS = 64_000_000
"""The most pixels an animated thumbnail's frames may hold together, at its largest size (memory)."""


@dataclass
class _Animation:
    frames: list[Image.Image]  # RGBA, at the largest size
    durations: list[int]  # ms per frame
    loop: int
    source_size: tuple[int, int]


def _animation(source: IO[bytes], largest: int, params: ThumbnailParams) -> _Animation | None:
    """Every frame of an animated source, shrunk to the largest size as it is read; None if not animated."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(source, formats=("GIF", "WEBP", "PNG"))
            if not getattr(image, "is_animated", False):
                source.seek(0)
                return None
            count = int(getattr(image, "n_frames", 1))  # like is_animated: only the animated formats' classes have it
            if count > params.max_frames:
                raise InvalidInput(f"animation has {count} frames, more than max_frames ({params.max_frames})")
            box = (min(image.width, largest), min(image.height, largest))
            if count * box[0] * box[1] > ANIMATION_PIXELS:
                raise InvalidInput(f"animation too large to thumbnail: {count} frames of {image.width}x"
                                   f"{image.height} (ask for smaller sizes, or fewer frames with max_frames)")
            frames, durations = [], []
            for frame in ImageSequence.Iterator(image):
                durations.append(int(frame.info.get("duration") or 100))
                shrunk = frame.convert("RGBA")
                if params.fit == "cover":
                    shrunk = _centre_square(shrunk)
                shrunk.thumbnail((largest, largest), Image.Resampling.BICUBIC, reducing_gap=REDUCING_GAP)
                frames.append(shrunk)
            return _Animation(frames, durations, int(image.info.get("loop", 0)), image.size)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise InvalidInput(f"image too large to process safely (possible decompression bomb): {exc}") from exc
        except UnidentifiedImageError:
            source.seek(0)
            return None  # not GIF, WebP or PNG: the still-image path decides
        except _DECODE_ERRORS as exc:
            raise InvalidInput(f"not a readable image: {exc}") from exc


def _write_animated(animation: _Animation, params: ThumbnailParams, context: Context) -> dict[str, Any]:
    """One animated thumbnail per size: every frame, its timing and the loop count kept."""
    fmt = params.output_format
    thumbnails: list[dict[str, Any]] = []
    for size in params.sizes:
        frames = []
        for frame in animation.frames:
            shrunk = frame.copy()
            if params.fit == "exact":
                shrunk = shrunk.resize((size, size), Image.Resampling.BICUBIC)
            else:
                shrunk.thumbnail((size, size), Image.Resampling.BICUBIC)
            frames.append(shrunk)
        options: dict[str, Any] = {"save_all": True, "append_images": frames[1:], "duration": animation.durations,
                                   "loop": animation.loop}
        if fmt.lossy:
            options["quality"] = params.quality
        buffer = io.BytesIO()
        frames[0].save(buffer, fmt.pillow, **options)
        width, height = frames[0].size
        ref = context.output.put(f"thumb-{size}.{fmt.ext}", buffer.getvalue(), content_type=fmt.content_type,
                                 metadata={"width": str(width), "height": str(height), "frames": str(len(frames))})
        thumbnails.append({"size": size, "key": ref.key, "width": width, "height": height, "bytes": ref.size,
                           "frames": len(frames)})
    context.logger.info("thumbnail %s: %d-frame animation, wrote %s", context.input.key, len(animation.frames),
                        ", ".join(t["key"] for t in thumbnails))
    return {"format": fmt.ext, "source": {"width": animation.source_size[0], "height": animation.source_size[1]},
            "frames": len(animation.frames), "thumbnails": thumbnails}


def _centre_square(image: Image.Image) -> Image.Image:
    """The largest centred square of ``image`` (cover: the thumbnail fills its box, the edges are cut)."""
    edge = min(image.size)
    left, top = (image.width - edge) // 2, (image.height - edge) // 2
    return image.crop((left, top, left + edge, top + edge))


def _kept_exif(image: Image.Image) -> Image.Exif | None:
    """The source's EXIF, marked upright (the thumbnail is turned already); None if it has none."""
    try:
        exif = image.getexif()
    except _DECODE_ERRORS:
        return None
    if not exif:
        return None
    exif[ExifTags.Base.Orientation] = 1
    return exif


def _poster(context: Context, params: ThumbnailParams, largest: int,
            not_an_image: InvalidInput) -> tuple[Image.Image, tuple[int, int], int]:
    """A video's poster frame, ``poster_seconds`` in (at most mid-clip): not the often black first frame."""
    from workers import media  # ffmpeg is only needed for videos

    if media.find_ffprobe() is None or media.find_ffmpeg() is None:
        raise not_an_image
    with media.spooled_input(context) as source:
        try:
            info = media.probe(source, context)
        except media.RefusedInput as refused:  # a playlist dressed as a picture: say so
            raise InvalidInput(f"not a readable image: {refused}") from None
        except InvalidInput:
            raise not_an_image from None
        if info.video is None:
            raise InvalidInput("not a readable image: a media file without pictures (audio only)")
        at = min(params.poster_seconds, (info.duration or 0) / 2)
        frame = context.scratch_dir.resolve() / "poster.png"
        binary = media.ffmpeg_binary()
        command = [binary, "-ss", f"{at:.3f}", *media.input_args(binary, info.demuxer),
                   "-frames:v", "1", "-an", "-sn", "-f", "image2", "-c:v", "png", "-protocol_whitelist", "file",
                   "-y", media.url(frame)]
        try:
            media.run_ffmpeg(command, context, source)
            if not frame.exists():
                raise InvalidInput("not a readable image: the video has no frame to show")
            with frame.open("rb") as picture:
                return _decode(picture, largest, context)
        finally:
            frame.unlink(missing_ok=True)


def _orientation(image: Image.Image, context: Context) -> int:
    """The EXIF orientation (1 = upright), read once from the source.

    Read here rather than with ``ImageOps.exif_transpose`` on each thumbnail:
    a resized copy keeps EXIF and XMP but loses TIFF tags, the source has all three.
    """
    try:
        return int(image.getexif().get(ExifTags.Base.Orientation, 1))
    except (*_DECODE_ERRORS, TypeError) as exc:
        # Broken EXIF on a good picture: an unrotated thumbnail beats none.
        context.logger.warning("thumbnail %s: ignoring unreadable EXIF: %s", context.input.key, exc)
        return 1


def _resizable(image: Image.Image) -> Image.Image:
    """``image`` in L, LA, RGB, RGBA or CMYK: modes that resample well.

    Resizing P or 1 would fall back to nearest-neighbour, and 16-bit modes
    would clip to white on the way to 8 bits, so they are converted first.
    """
    mode = image.mode
    if mode in ("L", "LA", "RGB", "RGBA", "CMYK"):
        return image
    if mode in ("P", "PA"):
        return image.convert("RGBA" if image.has_transparency_data else "RGB")
    if mode == "1":
        return image.convert("L")
    if mode.startswith("I"):  # I;16, I;16B, I: 16-bit samples scaled down to 8 bits
        return image.convert("I").point(lambda v: v / 256).convert("L")
    if mode == "F":
        low, high = image.getextrema()
        scale = 255 / (high - low) if high > low else 0  # type: ignore[operator]
        return image.point(lambda v: (v - low) * scale).convert("L")
    if mode in ("La", "RGBa"):
        return image.convert(mode.upper())
    return image.convert("RGB")  # RGBX, YCbCr, LAB, HSV


def _write_thumbnail(
    image: Image.Image,
    size: int,
    orientation: int,
    icc: bytes | None,
    exif: Image.Exif | None,
    params: ThumbnailParams,
    context: Context,
) -> dict[str, Any]:
    """Turn upright, convert, encode and write the already shrunk ``image``."""
    # Orientation after shrinking: transposing the small image is cheap, and a
    # square bounding box fits the same either way round.
    if orientation in _ORIENTATION_TRANSPOSE:
        image = image.transpose(_ORIENTATION_TRANSPOSE[orientation])
    image, icc = _for_format(image, icc, params.output_format, params.background, context)
    data = _encode(image, icc, exif, params)
    name = f"thumb-{size}.{params.output_format.ext}"
    ref = context.output.put(name, data, content_type=params.output_format.content_type,
                             metadata={"width": str(image.width), "height": str(image.height)})
    return {"size": size, "key": ref.key, "width": image.width, "height": image.height, "bytes": ref.size}


def _for_format(
    image: Image.Image, icc: bytes | None, fmt: OutputFormat, background: str, context: Context
) -> tuple[Image.Image, bytes | None]:
    """``image`` in a mode ``fmt`` stores, and the ICC profile that describes it now."""
    alpha = image.getchannel("A") if image.mode in ("LA", "RGBA") else None
    color = image.convert(image.mode.rstrip("A")) if alpha else image
    if color.mode == "CMYK" or (color.mode == "L" and not fmt.grayscale):
        color, icc = _to_rgb(color, icc, context)
    if alpha is None:
        return color, icc
    if fmt.alpha:
        color.putalpha(alpha)
        return color, icc
    # No alpha channel (JPEG): what was see-through shows the background (the page: white).
    fill = ImageColor.getcolor(background, color.mode)
    flattened = Image.new(color.mode, color.size, fill)
    flattened.paste(color, mask=alpha)
    return flattened, icc


_SRGB = ImageCms.createProfile("sRGB")


def _to_rgb(image: Image.Image, icc: bytes | None, context: Context) -> tuple[Image.Image, None]:
    """CMYK or grey -> RGB. The source's profile no longer fits, so it is dropped.

    With a profile, colours go through it to sRGB (a print CMYK profile makes
    a large difference); without one, or if the profile is unusable, Pillow's
    plain conversion is the best guess.
    """
    if icc:
        try:
            source_profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            converted = ImageCms.profileToProfile(image, source_profile, _SRGB, outputMode="RGB")
            if converted is not None:
                return converted, None
        except (ImageCms.PyCMSError, OSError, ValueError) as exc:
            context.logger.warning("thumbnail %s: ignoring unusable ICC profile: %s", context.input.key, exc)
    return image.convert("RGB"), None


def _encode(image: Image.Image, icc: bytes | None, exif: Image.Exif | None, params: ThumbnailParams) -> bytes:
    """The encoded thumbnail, with no metadata but the ICC profile.

    Pillow writes EXIF and XMP only when asked to, and the handler emptied
    ``image.info`` (which PNG and JPEG fall back to for profiles and comments).
    """
    options: dict[str, Any] = {}
    if params.output_format.lossy:
        options["quality"] = params.quality
    if params.output_format.pillow == "JPEG":
        options["optimize"] = True  # a few % smaller, costs next to nothing at thumbnail size
    if icc:
        options["icc_profile"] = icc
    if exif is not None:
        options["exif"] = exif.tobytes()
    buffer = io.BytesIO()
    image.save(buffer, params.output_format.pillow, **options)
    return buffer.getvalue()


KEEP_FREED_MEMORY = 128 * 1024 * 1024
"""How much freed memory a runner keeps for its next photo (glibc's ``M_TRIM_THRESHOLD``).

By default glibc gives a decoded photo's memory back to the kernel when it is
freed (large blocks are mapped apart, and the heap's top is trimmed), and the
next photo takes it again page by page: 4,000 page faults, 8-18 ms of a 2 MP
photo's 150 ms. A runner makes one thumbnail after another, so it keeps that
memory instead: between steps it holds what its photos needed (about 30 MB
more for 2 MP photos, 70 MB for 12 MP ones at 1024 px) until it is stopped."""

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
_MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest: bigger blocks are still mapped apart, and given back


def keep_freed_memory() -> bool:
    """Make this process keep freed memory for reuse (:data:`KEEP_FREED_MEMORY`); False where not glibc."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (macOS has no mallopt)
        return False
    # A fixed mmap threshold also stops glibc raising it on its own, which is what trimming follows.
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, KEEP_FREED_MEMORY))


def warm() -> None:
    """Called once in each new runner, before its first event (see ``fileproc.runtime.pool``).

    Pillow loads its format plugins and sets up each codec on first use: 25-30 ms
    that would otherwise land on the first thumbnail a runner makes. And the
    runner keeps freed memory for the next photo (:func:`keep_freed_memory`):
    process-wide, so here and not in the handler, which other code may call.
    """
    keep_freed_memory()
    Image.init()
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), "teal").save(buffer, "JPEG")
    with Image.open(io.BytesIO(buffer.getvalue()), formats=INPUT_FORMATS) as sample:
        sample.draft(None, (16, 16))
        sample.load()
        small = sample.resize((16, 12), Image.Resampling.BICUBIC)
    for fmt in FORMATS.values():
        small.save(io.BytesIO(), fmt.pillow)
