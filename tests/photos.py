"""Test photos: real photos shipped by installed packages, honest derived copies, broken files."""

from __future__ import annotations

import importlib.resources
import io
import os
import shutil
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import ExifTags, Image, features
from skimage import data

from photoindex.settings import get_settings

Faces = Literal["some", "none", "unknown"]
Outcome = Literal["indexed", "rejected", "skipped at decode", "ignored"]

SKIMAGE_DATA = Path(str(importlib.resources.files("skimage") / "data"))
INSIGHTFACE_IMAGES = Path(str(importlib.resources.files("insightface") / "data" / "images"))

SPACES_AND_QUOTES = "Family \"Best\" of 'Summer' 2020"
NOT_AN_IMAGE = "not an image: content is not a known image format"
CORRUPT = "corrupt or truncated image: "

# Human faces in each shipped photo, judged by eye; "unknown" where a detector may go either way.
SOURCES: dict[str, tuple[Faces, str]] = {
    "astronaut": ("some", "skimage.data.astronaut(): Eileen Collins, portrait"),
    "coffee": ("none", "skimage.data.coffee(): a cup of coffee"),
    "chelsea": ("none", "skimage.data.chelsea(): a cat"),
    "rocket": ("none", "skimage.data.rocket(): a rocket launch"),
    "motorcycle_left": ("none", "skimage.data.stereo_motorcycle()[0]: a motorcycle"),
    "hubble_deep_field": ("none", "skimage.data.hubble_deep_field(): galaxies"),
    "retina": ("none", "skimage.data.retina(): a fundus photo"),
    "camera": ("unknown", "skimage.data.camera(): grayscale cameraman, face in profile"),
    "group_t1": ("some", "insightface data/images/t1.jpg: six people at a card table"),
    "tom_hanks": ("some", "insightface data/images/Tom_Hanks_54745.png: aligned face crop"),
    "mask_blue": ("none", "insightface data/images/mask_blue.jpg: a surgical mask"),
    "mask_black": ("none", "insightface data/images/mask_black.jpg: a black face mask"),
    "mask_white": ("none", "insightface data/images/mask_white.jpg: a white face mask"),
    "mask_green": ("none", "insightface data/images/mask_green.jpg: a green face mask"),
}

# Pixels to store so that a viewer applying the EXIF orientation shows the upright photo.
_STORE_FOR_ORIENTATION: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


@cache
def _load_sources() -> dict[str, Image.Image]:
    # scikit-image's stubs leave its loaders untyped, so they are looked up by name.
    loaders = ["astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "retina", "camera"]
    photos = {name: Image.fromarray(getattr(data, name)()) for name in loaders}
    left, _right, _disparity = data.stereo_motorcycle()  # type: ignore[no-untyped-call]
    photos["motorcycle_left"] = Image.fromarray(left)
    for name, file in [
        ("group_t1", "t1.jpg"),
        ("tom_hanks", "Tom_Hanks_54745.png"),
        ("mask_blue", "mask_blue.jpg"),
        ("mask_black", "mask_black.jpg"),
        ("mask_white", "mask_white.jpg"),
        ("mask_green", "mask_green.jpg"),
    ]:
        with Image.open(INSIGHTFACE_IMAGES / file) as shipped:
            photos[name] = shipped.convert("RGB")
    return photos


def real_photos() -> dict[str, Image.Image]:
    """Real photos shipped by scikit-image and insightface, by name (fresh copies)."""
    return {name: photo.copy() for name, photo in _load_sources().items()}


@dataclass(frozen=True)
class PhotoFile:
    """One valid photo on disk, where it came from and what a viewer shows (upright size)."""

    path: Path
    source: str
    faces: Faces
    transform: str
    width: int
    height: int


@dataclass
class PhotoManifest:
    """Every valid photo in a folder, and the files that discovery must silently ignore."""

    root: Path
    photos: list[PhotoFile]
    ignored: list[Path] = field(default_factory=list)

    def by_path(self) -> dict[str, PhotoFile]:
        """The photos keyed by their path as a string."""
        return {str(photo.path): photo for photo in self.photos}


def save_photo(
    image: Image.Image,
    path: Path | bytes,
    fmt: str = "JPEG",
    quality: int = 90,
    orientation: int | None = None,
) -> None:
    """Save an upright photo; with `orientation`, store pixels that the EXIF tag turns upright."""
    options: dict[str, Any] = {}
    if fmt in ("JPEG", "WEBP", "AVIF"):
        options["quality"] = quality
    if orientation is not None:
        image = image.transpose(_STORE_FOR_ORIENTATION[orientation]) if orientation > 1 else image
        exif = Image.Exif()
        exif[ExifTags.Base.Orientation] = orientation
        options["exif"] = exif.tobytes()
    if isinstance(path, Path):
        path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, fmt, **options)


@dataclass(frozen=True)
class _Recipe:
    source: str
    name: str
    transform: str
    edit: Callable[[Image.Image], Image.Image]
    fmt: str = "JPEG"
    quality: int = 90
    orientation: int | None = None
    faces: Faces | None = None  # None: same as the source


def _resize(factor: float) -> Callable[[Image.Image], Image.Image]:
    def edit(image: Image.Image) -> Image.Image:
        size = (round(image.width * factor), round(image.height * factor))
        return image.resize(size, Image.Resampling.LANCZOS)

    return edit


def _same(image: Image.Image) -> Image.Image:
    return image


_RECIPES = [
    _Recipe("astronaut", "astronaut-mirrored", "flip left-right",
            lambda im: im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)),
    _Recipe("group_t1", "t1-left-half", "crop (0, 0, 640, 886): three of the six people",
            lambda im: im.crop((0, 0, 640, 886))),
    _Recipe("coffee", "coffee-q25", "JPEG quality 25", _same, quality=25),
    _Recipe("chelsea", "chelsea-exif6", "stored rotated, EXIF orientation 6", _same,
            orientation=6),
    _Recipe("astronaut", "astronaut-exif8", "stored rotated, EXIF orientation 8", _same,
            orientation=8),
    _Recipe("rocket", "rocket-exif3", "stored upside down, EXIF orientation 3", _same,
            orientation=3),
    _Recipe("group_t1", "t1-half-size", "resize to 50% (640x443)", _resize(0.5)),
    _Recipe("tom_hanks", "tom-hanks-224", "upscale 112 -> 224 px", _resize(2.0), fmt="PNG"),
    _Recipe("motorcycle_left", "motorcycle-rot90", "pixels rotated 90 degrees",
            lambda im: im.transpose(Image.Transpose.ROTATE_90)),
    _Recipe("hubble_deep_field", "hubble-crop", "centre crop 600x400, saved as PNG",
            lambda im: im.crop((200, 236, 800, 636)), fmt="PNG"),
    _Recipe("astronaut", "astronaut-webp", "saved as WebP quality 80", _same, fmt="WEBP",
            quality=80),
    _Recipe("group_t1", "t1-gray", "grayscale (L), saved as JPEG",
            lambda im: im.convert("L")),
    _Recipe("retina", "retina-800", "resize to 800x800", _resize(800 / 1411)),
    _Recipe("astronaut", "astronaut-face-crop", "crop (140, 20, 360, 260) around the face",
            lambda im: im.crop((140, 20, 360, 260))),
]  # fmt: skip

_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "TIFF": ".tif"}

_ORIGINAL_FOLDERS = {
    "astronaut": "2019/summer",
    "coffee": "2019/summer",
    "chelsea": "2019/summer",
    "group_t1": SPACES_AND_QUOTES,
    "tom_hanks": SPACES_AND_QUOTES,
    "rocket": "phone/DCIM/100APPLE",
    "motorcycle_left": "phone/DCIM/100APPLE",
    "camera": "phone/DCIM/100APPLE",
    "hubble_deep_field": "science",
    "retina": "science",
    "mask_blue": "products",
    "mask_black": "products",
    "mask_white": "products/more",
    "mask_green": "products/more",
}


def make_photo_folder(dest: Path, n_derived: int = 12) -> PhotoManifest:
    """Write the shipped photos plus `n_derived` recorded edits of them in nested folders."""
    photos = _load_sources()
    manifest = PhotoManifest(root=dest, photos=[])
    for name, image in photos.items():
        fmt = "PNG" if name in ("camera", "tom_hanks") else "JPEG"
        path = dest / _ORIGINAL_FOLDERS[name] / f"{name}{_EXTENSIONS[fmt]}"
        save_photo(image, path, fmt, quality=92)
        faces = SOURCES[name][0]
        transform = f"original, saved as {fmt}"
        manifest.photos.append(PhotoFile(path, name, faces, transform, *image.size))
    for i in range(n_derived):
        recipe = _RECIPES[i % len(_RECIPES)]
        rounds = i // len(_RECIPES)
        quality = max(20, recipe.quality - 10 * rounds)
        stem = recipe.name if rounds == 0 else f"{recipe.name}-{rounds}"
        upright = recipe.edit(photos[recipe.source])
        folder = "edits/exif" if recipe.orientation else "edits"
        path = dest / folder / f"{stem}{_EXTENSIONS[recipe.fmt]}"
        save_photo(upright, path, recipe.fmt, quality=quality, orientation=recipe.orientation)
        faces = recipe.faces or SOURCES[recipe.source][0]
        transform = recipe.transform if rounds == 0 else f"{recipe.transform}, quality {quality}"
        manifest.photos.append(
            PhotoFile(path, recipe.source, faces, transform, upright.width, upright.height)
        )
    manifest.ignored.extend(_write_clutter(dest, photos["astronaut"]))
    return manifest


def _write_clutter(dest: Path, photo: Image.Image) -> list[Path]:
    """Files a photo library holds that are not photos to index; discovery skips them."""
    clutter = {
        dest / "notes.txt": b"Holiday notes: remember to back up the SD card.\n",
        dest / "library.json": b'{"albums": ["2019", "2020"]}\n',
        dest / "2019/summer/astronaut.xmp": (
            b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF/></x:xmpmeta>\n'
        ),
        dest / ".DS_Store": b"\x00\x00\x00\x01Bud1" + bytes(64),
    }
    for path, content in clutter.items():
        path.write_bytes(content)
    thumbs = [
        dest / ".thumbnails/normal/astronaut.png",
        dest / "2019/@eaDir/astronaut.jpg/SYNOPHOTO_THUMB_XL.jpg",
        dest / ".git/astronaut.jpg",
    ]
    small = photo.resize((128, 128))
    for path in thumbs:
        save_photo(small, path, "PNG" if path.suffix == ".png" else "JPEG")
    return [*clutter, *thumbs]


@dataclass(frozen=True)
class BadCase:
    """One awkward file: what it is, what indexing should do with it, and the reason shown."""

    what: str
    outcome: Outcome
    reason: str = ""  # exact Rejected/SkipImage reason; for corrupt files, its start


def make_bad_files(dest: Path) -> dict[str, str]:
    """Write awkward and broken files into `dest`; return file path -> what it is."""
    return {path: case.what for path, case in make_bad_cases(dest).items()}


def make_bad_cases(dest: Path) -> dict[str, BadCase]:
    """Write awkward and broken files into `dest`; return file path -> expected outcome."""
    dest.mkdir(parents=True, exist_ok=True)
    photos = _load_sources()
    cases: dict[str, BadCase] = {}

    def add(path: Path | bytes, case: BadCase) -> None:
        cases[os.fsdecode(path)] = case

    jpeg = io.BytesIO()
    photos["coffee"].save(jpeg, "JPEG", quality=90)
    (dest / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) * 6 // 10])
    add(dest / "truncated.jpg", BadCase("coffee JPEG cut at 60%", "skipped at decode", CORRUPT))

    (dest / "empty.jpg").write_bytes(b"")
    add(dest / "empty.jpg", BadCase("zero-byte file named .jpg", "rejected", "empty file"))

    text = b"This is a shopping list, not a photo.\nmilk\neggs\n"
    (dest / "shopping-list.jpg").write_bytes(text)
    add(dest / "shopping-list.jpg", BadCase("text file named .jpg", "rejected", NOT_AN_IMAGE))
    (dest / "readme.png").write_bytes(text)
    add(dest / "readme.png", BadCase("text file named .png", "rejected", NOT_AN_IMAGE))

    photos["astronaut"].resize((1, 1)).save(dest / "one-pixel.png")
    add(
        dest / "one-pixel.png",
        BadCase("astronaut shrunk to 1x1 PNG", "skipped at decode", "image too small: 1x1"),
    )
    shutil.copyfile(SKIMAGE_DATA / "no_time_for_that_tiny.gif", dest / "tiny-animation.gif")
    add(
        dest / "tiny-animation.gif",
        BadCase(
            "skimage's 14x25 animated GIF (24 frames)",
            "skipped at decode",
            "image too small: 14x25",
        ),
    )

    limit = get_settings().max_image_pixels
    _write_png_bomb(dest / "bomb.png", 30000, 30000)
    add(
        dest / "bomb.png",
        BadCase(
            "valid 30000x30000 1-bit PNG, about 110 KB on disk (decompression bomb)",
            "skipped at decode",
            f"image too large: 30000x30000 pixels exceeds the {limit}-pixel limit",
        ),
    )

    photos["chelsea"].convert("CMYK").save(dest / "cmyk.jpg", "JPEG", quality=92)
    add(dest / "cmyk.jpg", BadCase("CMYK JPEG of chelsea", "indexed"))
    camera16 = np.asarray(photos["camera"].convert("L"), dtype=np.uint16) * 257
    Image.fromarray(camera16).save(dest / "sixteen-bit.png")
    add(dest / "sixteen-bit.png", BadCase("16-bit grayscale PNG (I;16) of camera", "indexed"))
    photos["camera"].convert("L").save(dest / "grayscale.jpg", quality=92)
    add(dest / "grayscale.jpg", BadCase("8-bit grayscale JPEG (L) of camera", "indexed"))
    photos["coffee"].save(dest / "progressive.jpg", "JPEG", quality=90, progressive=True)
    add(dest / "progressive.jpg", BadCase("progressive JPEG of coffee", "indexed"))
    _rgba_cutout(photos["astronaut"]).save(dest / "rgba-cutout.png")
    add(dest / "rgba-cutout.png", BadCase("RGBA PNG, transparent outside a circle", "indexed"))
    _palette_with_transparency(photos["coffee"]).save(dest / "palette-transparent.png")
    add(
        dest / "palette-transparent.png",
        BadCase("palette PNG with a transparent index (top-left 64x64 block)", "indexed"),
    )
    _animated_gif(photos["chelsea"], dest / "animated.gif")
    add(dest / "animated.gif", BadCase("3-frame animated GIF cut from chelsea", "indexed"))
    photos["rocket"].save(dest / "scan.tif", "TIFF", compression="tiff_lzw")
    add(dest / "scan.tif", BadCase("LZW TIFF of rocket", "indexed"))
    photos["mask_blue"].save(dest / "mask.bmp", "BMP")
    add(dest / "mask.bmp", BadCase("BMP of mask_blue", "indexed"))

    upright = orientation_source()
    for orientation in range(1, 9):
        path = dest / "orientation" / f"orientation-{orientation}.jpg"
        save_photo(upright, path, orientation=orientation)
        add(path, BadCase(f"astronaut crop stored with EXIF orientation {orientation}", "indexed"))

    locked = dest / "locked.jpg"
    save_photo(photos["chelsea"], locked)
    locked.chmod(0)
    try:
        with open(locked, "rb"):
            pass
    except PermissionError:
        add(locked, BadCase("chmod 000 JPEG", "rejected", "permission denied"))
    else:
        add(locked, BadCase("chmod 000 JPEG, readable anyway (running as root)", "indexed"))

    (dest / "broken-link.jpg").symlink_to("no-such-photo.jpg")
    add(
        dest / "broken-link.jpg", BadCase("symlink to a missing file", "rejected", "broken symlink")
    )
    (dest / "loop-a.jpg").symlink_to("loop-b.jpg")
    (dest / "loop-b.jpg").symlink_to("loop-a.jpg")
    for name in ("loop-a.jpg", "loop-b.jpg"):
        add(
            dest / name, BadCase("file symlinks pointing at each other", "rejected", "symlink loop")
        )
    (dest / "link-to-grayscale.jpg").symlink_to("grayscale.jpg")
    add(
        dest / "link-to-grayscale.jpg",
        BadCase("symlink to grayscale.jpg: listed once, under the real name", "ignored"),
    )

    loop = dest / "loop"
    save_photo(photos["motorcycle_left"], loop / "inside-loop.jpg")
    add(loop / "inside-loop.jpg", BadCase("photo in a folder that links to itself", "indexed"))
    (loop / "again").symlink_to(".", target_is_directory=True)
    add(loop / "again", BadCase("folder symlink to its own folder (cycle)", "ignored"))
    (loop / "up").symlink_to("..", target_is_directory=True)
    add(loop / "up", BadCase("folder symlink to its parent (cycle)", "ignored"))

    raw_name = os.path.join(os.fsencode(dest), b"caf\xe9.jpg")
    try:
        save_photo(photos["coffee"], raw_name)
    except OSError:  # file systems that insist on UTF-8 names refuse this one
        pass
    else:
        add(raw_name, BadCase("JPEG with a Latin-1 (non-UTF-8) byte in its name", "indexed"))
    quoted = dest / 'my "best" photo\'s copy (1).jpg'
    save_photo(photos["astronaut"], quoted)
    add(quoted, BadCase("JPEG with spaces, quotes and brackets in its name", "indexed"))

    ftyp = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic"
    (dest / "IMG_0001.HEIC").write_bytes(ftyp + b"\x00\x00\x00\x10mdat" + bytes(8))
    add(
        dest / "IMG_0001.HEIC",
        BadCase("HEIC header only (ftyp heic)", "rejected", "unsupported format: HEIC"),
    )
    if features.check("avif"):  # type: ignore[no-untyped-call]
        save_photo(photos["astronaut"], dest / "astronaut.avif", "AVIF", quality=70)
        add(dest / "astronaut.avif", BadCase("real AVIF written by Pillow", "indexed"))
    photos["rocket"].save(dest / "DSC_0042.NEF", "TIFF")
    add(
        dest / "DSC_0042.NEF",
        BadCase("TIFF named as a Nikon RAW file", "rejected", "unsupported format: RAW (nef)"),
    )

    for name, content in [
        ("notes.txt", b"not a photo\n"),
        ("coffee.xmp", b'<x:xmpmeta xmlns:x="adobe:ns:meta/"/>\n'),
        (".DS_Store", b"\x00\x00\x00\x01Bud1" + bytes(32)),
    ]:
        (dest / name).write_bytes(content)
        add(dest / name, BadCase(f"{name}: not a photo", "ignored"))
    return cases


def orientation_source() -> Image.Image:
    """The upright 384x256 astronaut crop that the orientation files all display."""
    return _load_sources()["astronaut"].crop((64, 0, 448, 256))


def _write_png_bomb(path: Path, width: int, height: int) -> None:
    """A valid, all-black 1-bit PNG that compresses to almost nothing."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return len(body).to_bytes(4, "big") + kind + body + crc.to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([1, 0, 0, 0, 0])
    row = bytes(1 + (width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    rows_per_block = 1000
    parts = [compressor.compress(row * min(rows_per_block, height - start))
             for start in range(0, height, rows_per_block)]  # fmt: skip
    parts.append(compressor.flush())
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", b"".join(parts))
        + chunk(b"IEND", b"")
    )


def _rgba_cutout(photo: Image.Image) -> Image.Image:
    yy, xx = np.mgrid[: photo.height, : photo.width]
    radius = min(photo.size) * 0.45
    inside = (xx - photo.width / 2) ** 2 + (yy - photo.height / 2) ** 2 <= radius**2
    rgba = photo.convert("RGBA")
    rgba.putalpha(Image.fromarray((inside * 255).astype(np.uint8)))
    return rgba


def _palette_with_transparency(photo: Image.Image) -> Image.Image:
    paletted = photo.quantize(colors=63)
    palette = paletted.getpalette() or []
    palette = (palette + [0] * 768)[: 63 * 3] + [255, 0, 255]  # index 63: magenta, transparent
    paletted.putpalette(palette)
    paletted.paste(63, (0, 0, 64, 64))
    paletted.info["transparency"] = 63
    return paletted


def _animated_gif(photo: Image.Image, path: Path) -> None:
    frames = [photo.crop((x, 0, x + 300, 300)) for x in (0, 75, 150)]
    frames[0].save(path, "GIF", save_all=True, append_images=frames[1:], duration=200, loop=0)
