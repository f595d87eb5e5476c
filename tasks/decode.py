"""Decoding once, at the size needed, with the fastest decoder for the format.

JPEG (RGB or grayscale) goes through `simplejpeg` (libjpeg-turbo, decoding straight to a
numpy array at the smallest DCT scale that is still big enough); everything else, CMYK
JPEG and any JPEG `simplejpeg` will not take goes through Pillow. Either way the result
is an upright array in the channel order the caller asks for.
"""

from __future__ import annotations

import math
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import cv2
import numpy as np
import numpy.typing as npt
import simplejpeg
from PIL import (
    BmpImagePlugin,
    GifImagePlugin,
    Image,
    ImageFile,
    ImageOps,
    JpegImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
    UnidentifiedImageError,
    WebPImagePlugin,
)

from photoindex.settings import get_settings
from tasks.discover import HEAD_SIZE, NOT_AN_IMAGE, decodable_formats, sniff_format

MIN_SIDE = 16
EXIF_IFD = 0x8769
DATETIME_ORIGINAL = 36867
WHITE = (255, 255, 255)
ORIENTATION = 0x0112  # the EXIF tag Pillow's exif_transpose reads (from EXIF or XMP)

Order = Literal["RGB", "BGR"]
Pixels = npt.NDArray[np.uint8]

# What Pillow raises for damaged files, while opening or while decoding pixels.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, struct.error)
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_DEEP_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_HEADER_READERS: dict[str, Callable[[str], ImageFile.ImageFile]] = {
    "JPEG": JpegImagePlugin.JpegImageFile,
    "PNG": PngImagePlugin.PngImageFile,
    "GIF": GifImagePlugin.GifImageFile,
    "WEBP": WebPImagePlugin.WebPImageFile,
    "BMP": BmpImagePlugin.BmpImageFile,
    "TIFF": TiffImagePlugin.TiffImageFile,
}


class SkipImage(Exception):
    """A photo that cannot be used, with a reason a person can read."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Decoded:
    """An upright (H, W, 3) uint8 image; width and height are the original's, upright."""

    pixels: Pixels
    width: int
    height: int
    order: Order = "RGB"
    decoder: str = "pillow"
    taken: datetime | None = None
    """When the photo was taken, from EXIF DateTimeOriginal (wall-clock time), if recorded."""

    @property
    def image(self) -> Image.Image:
        """The pixels as an RGB Pillow image (what open_clip's transforms take)."""
        return Image.fromarray(self.rgb())

    def rgb(self) -> Pixels:
        """The pixels in RGB order."""
        return self.pixels if self.order == "RGB" else swap_channels(self.pixels)

    def bgr(self) -> Pixels:
        """The pixels in BGR order (what OpenCV-style face models take)."""
        return self.pixels if self.order == "BGR" else swap_channels(self.pixels)

    def reduced(self, max_side: int, slack: float = 1.5) -> Decoded:
        """This image shrunk by a whole factor to at most `slack * max_side`, at least `max_side`.

        A whole factor averages exact pixel blocks, OpenCV's fast path: 2016 -> 672 px takes
        about a quarter of the time of 2016 -> 448 px. The model resizes to its input anyway.
        """
        height, width = self.pixels.shape[:2]
        factor = math.ceil(max(width, height) / (max_side * slack))
        if factor <= 1:
            return self
        if max(width, height) // factor < max_side:
            pixels = fit(self.pixels, max_side)
        else:
            w, h = width // factor, height // factor
            pixels = np.asarray(
                cv2.resize(
                    self.pixels[: h * factor, : w * factor], (w, h), interpolation=cv2.INTER_AREA
                ),
                dtype=np.uint8,
            )
        return Decoded(pixels, self.width, self.height, self.order, self.decoder, self.taken)


def swap_channels(pixels: Pixels) -> Pixels:
    """RGB to BGR or back, as a new contiguous array."""
    return np.ascontiguousarray(pixels[:, :, ::-1])


def fit(pixels: Pixels, max_side: int, slack: float = 1.0) -> Pixels:
    """Shrink an image to `max_side` on its long side if it exceeds `slack * max_side`."""
    height, width = pixels.shape[:2]
    if max(width, height) <= max_side * slack:
        return pixels
    scale = max_side / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(cv2.resize(pixels, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)


def decode_image(
    path: str,
    max_side: int | None = None,
    slack: float = 1.0,
    order: Order = "RGB",
    decoder: Literal["fastest", "pillow"] = "fastest",
    max_pixels: int | None = None,
) -> Decoded:
    """Decode a photo upright, at most `max_side` pixels on its long side, in `order`.

    `decoder="pillow"` forces Pillow for every format (the benchmarks compare the two).
    A photo of more than `max_pixels` pixels (default: the settings' `max_image_pixels`)
    is skipped before its pixels are decoded.

    With `slack` above 1, an image up to `slack * max_side` is returned as decoded:
    resampling a JPEG from its nearest DCT scale to the exact size costs more than
    decoding it (measured: 50-100 ms vs 35 ms for 2000 -> 1600 px), and the models
    resize to their own input size anyway.
    """
    limit = get_settings().max_image_pixels if max_pixels is None else max_pixels
    _pillow_limit(limit)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
    except FileNotFoundError as exc:
        raise SkipImage("file not found") from exc
    except PermissionError as exc:
        raise SkipImage("permission denied") from exc
    except UnidentifiedImageError as exc:
        raise SkipImage(_unidentified_reason(path)) from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise SkipImage(_too_large(_declared_size(path), limit)) from exc
    except _DECODE_ERRORS as exc:
        raise SkipImage(f"corrupt or truncated image: {exc}") from exc
    with img:
        try:
            return _decode_opened(path, img, limit, max_side, slack, order, decoder)
        except Image.DecompressionBombError as exc:
            raise SkipImage(_too_large(img.size, limit)) from exc
        except _DECODE_ERRORS as exc:
            raise SkipImage(f"corrupt or truncated image: {exc}") from exc


def _pillow_limit(limit: int) -> None:
    """Make Pillow's own decompression-bomb check, a module global it reads, use `limit`."""
    if Image.MAX_IMAGE_PIXELS != limit:
        Image.MAX_IMAGE_PIXELS = limit


def _decode_opened(
    path: str,
    img: Image.Image,
    limit: int,
    max_side: int | None,
    slack: float,
    order: Order,
    decoder: str,
) -> Decoded:
    width, height = img.size
    if width * height > limit:  # Pillow only warns between 1x and 2x the limit
        raise SkipImage(_too_large((width, height), limit))
    if min(width, height) < MIN_SIDE:
        raise SkipImage(f"image too small: {width}x{height}")
    taken = exif_capture_time(img)
    if decoder == "fastest" and img.format in ("JPEG", "MPO") and img.mode in ("RGB", "L"):
        fast = _decode_turbo(path, img, max_side, slack, order)
        if fast is not None:
            fast.taken = taken
            return fast
    decoded = _decode_pillow(img, max_side, slack)
    if order == "BGR":
        decoded.pixels, decoded.order = swap_channels(decoded.pixels), "BGR"
    decoded.taken = taken
    return decoded


def _decode_turbo(
    path: str, img: Image.Image, max_side: int | None, slack: float, order: Order
) -> Decoded | None:
    """A JPEG through simplejpeg, or None when it refuses the file (Pillow then decides).

    simplejpeg is strict: a file with any libjpeg warning (truncated, stray bytes) goes to
    Pillow, which indexes or skips it exactly as it always did.
    """
    width, height = img.size
    min_w = min_h = 0
    if max_side is not None and max(width, height) > max_side:
        # The DCT scale Pillow's draft mode picks (1/2, 1/4 or 1/8, never below the target),
        # so the geometry, and the faces' crop resolution, stay exactly what they were.
        scale = max_side / max(width, height)
        target_w, target_h = math.ceil(width * scale), math.ceil(height * scale)
        fits = min(width // target_w, height // target_h)
        reduce = next(r for r in (8, 4, 2, 1) if fits >= r)
        min_w, min_h = math.ceil(width / reduce), math.ceil(height / reduce)
    orientation = int(img.getexif().get(ORIENTATION, 1))
    with open(path, "rb") as stream:
        data = stream.read()
    try:
        pixels: Pixels = simplejpeg.decode_jpeg(
            data, colorspace=order, min_width=min_w, min_height=min_h
        )
    except ValueError:
        return None
    pixels = _orient(pixels, orientation)
    if orientation in (5, 6, 7, 8):  # these orientations swap the sides
        width, height = height, width
    if max_side is not None:
        pixels = fit(pixels, max_side, slack)
    return Decoded(np.ascontiguousarray(pixels), width, height, order, "simplejpeg")


def _orient(pixels: Pixels, orientation: int) -> Pixels:
    """Apply an EXIF orientation as Pillow's exif_transpose does."""
    if orientation == 2:
        return pixels[:, ::-1]
    if orientation == 3:
        return pixels[::-1, ::-1]
    if orientation == 4:
        return pixels[::-1]
    if orientation == 5:
        return pixels.transpose(1, 0, 2)
    if orientation == 6:
        return np.rot90(pixels, -1)
    if orientation == 7:
        return pixels.transpose(1, 0, 2)[::-1, ::-1]
    if orientation == 8:
        return np.rot90(pixels, 1)
    return pixels


def _decode_pillow(img: Image.Image, max_side: int | None, slack: float) -> Decoded:
    width, height = img.size
    if max_side is not None and img.format in ("JPEG", "MPO"):
        # Draft mode lets libjpeg decode at 1/2, 1/4 or 1/8 scale, never below the target.
        scale = max_side / max(width, height)
        if scale < 1:
            img.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
    img.load()  # the first frame of an animation
    stored_size = img.size
    upright = ImageOps.exif_transpose(img)
    if upright.size != stored_size:  # orientations 5-8 swap the sides
        width, height = height, width
    rgb = _to_rgb(upright)
    if max_side is not None and max(rgb.size) > max_side * slack:
        rgb.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    return Decoded(np.asarray(rgb), width, height, "RGB", "pillow")


def exif_capture_time(img: Image.Image) -> datetime | None:
    """EXIF DateTimeOriginal as a naive wall-clock time; None if absent or unreadable."""
    try:
        raw = img.getexif().get_ifd(EXIF_IFD).get(DATETIME_ORIGINAL)
    except _DECODE_ERRORS:
        return None
    return parse_exif_time(raw)


def read_capture_time(path: str) -> datetime | None:
    """EXIF DateTimeOriginal of a file, read from its header without decoding the pixels."""
    try:
        with Image.open(path) as img:
            return exif_capture_time(img)
    except (UnidentifiedImageError, Image.DecompressionBombError, *_DECODE_ERRORS):
        return None


def parse_exif_time(raw: object) -> datetime | None:
    """An EXIF time ("2021:07:04 15:30:00"); None for blanks such as "0000:00:00 00:00:00"."""
    if isinstance(raw, bytes):
        raw = raw.decode("ascii", errors="replace")
    if not isinstance(raw, str):
        return None
    try:
        return datetime.strptime(raw.strip().rstrip("\x00")[:19], "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None


def capture_time(taken: datetime | None, mtime: float) -> dict[str, str]:
    """The payload fields of a photo's capture time: EXIF's, else the file's modification
    time (as local wall-clock time), and which of the two it is."""
    if taken is not None:
        return {"taken_at": taken.isoformat(timespec="seconds"), "taken_at_source": "exif"}
    local = datetime.fromtimestamp(mtime).replace(microsecond=0)
    return {"taken_at": local.isoformat(timespec="seconds"), "taken_at_source": "file"}


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in _DEEP_MODES:
        return _to_8bit(img).convert("RGB")
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        flat = Image.new("RGB", rgba.size, WHITE)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    if img.mode == "RGB":
        return img
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, ...


def _to_8bit(img: Image.Image) -> Image.Image:
    pixels = np.asarray(img).astype(np.float64)
    top = float(pixels.max(initial=0.0))
    if img.mode.startswith("I;16") or 255 < top <= 65535:
        top = 65535.0
    elif img.mode == "F" and top <= 1.0:
        top = 1.0
    else:
        top = max(top, 255.0)
    scaled = np.clip(pixels * (255.0 / top), 0, 255).round().astype(np.uint8)
    return Image.fromarray(scaled, mode="L")


def _too_large(size: tuple[int, int] | None, limit: int) -> str:
    what = f"{size[0]}x{size[1]} pixels" if size else "the declared size"
    return f"image too large: {what} exceeds the {limit}-pixel limit"


def _declared_size(path: str) -> tuple[int, int] | None:
    """Width and height from the file's header, read without Pillow's size check."""
    reader = _HEADER_READERS.get(sniff_format(_head(path)) or "")
    if reader is None:
        return None
    try:
        with reader(path) as header:
            return header.size
    except _DECODE_ERRORS:
        return None


def _head(path: str) -> bytes:
    try:
        with open(path, "rb") as stream:
            return stream.read(HEAD_SIZE)
    except OSError:
        return b""


def _unidentified_reason(path: str) -> str:
    head = _head(path)
    if not head:
        return "empty file"
    kind = sniff_format(head)
    if kind is None:
        return NOT_AN_IMAGE
    if kind not in decodable_formats():
        return f"unsupported format: {kind}"
    return f"corrupt or truncated image: not a readable {kind} file"
