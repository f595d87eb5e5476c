"""Discovery and decoding over real shipped photos and a folder of awkward and broken files."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from photoindex.settings import get_settings
from tasks.decode import Decoded, SkipImage, decode_image
from tasks.discover import CHUNK_SIZE, ImageRef, Rejected, discover_images, hash_file
from tests.photos import (
    CORRUPT,
    NOT_AN_IMAGE,
    SOURCES,
    SPACES_AND_QUOTES,
    BadCase,
    PhotoManifest,
    make_bad_cases,
    make_photo_folder,
    orientation_source,
    real_photos,
)

Found = tuple[list[ImageRef], list[Rejected]]


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> PhotoManifest:
    """A nested folder of real photos and recorded edits of them."""
    return make_photo_folder(tmp_path_factory.mktemp("photos"))


@pytest.fixture(scope="module")
def bad_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of awkward and broken files."""
    return tmp_path_factory.mktemp("bad")


@pytest.fixture(scope="module")
def bad(bad_root: Path) -> dict[str, BadCase]:
    """The awkward and broken files, with what should happen to each."""
    return make_bad_cases(bad_root)


@pytest.fixture(scope="module")
def bad_found(bad_root: Path, bad: dict[str, BadCase]) -> Found:
    """What discovery finds in the awkward folder."""
    return discover_images(bad_root)


def _mean_abs_diff(a: Image.Image, b: Image.Image) -> float:
    left = np.asarray(a.convert("RGB"), dtype=np.float64)
    right = np.asarray(b.convert("RGB").resize(a.size), dtype=np.float64)
    return float(np.abs(left - right).mean())


def _reason(path: str) -> str:
    with pytest.raises(SkipImage) as caught:
        decode_image(path, max_side=512)
    return caught.value.reason


def test_every_photo_is_found_exactly_once(photos: PhotoManifest) -> None:
    refs, rejected = discover_images(photos.root)
    paths = [ref.path for ref in refs]
    assert len(photos.photos) >= 20
    assert len(paths) == len(set(paths))
    assert sorted(paths) == sorted(photos.by_path())
    assert rejected == []


def test_clutter_and_hidden_folders_are_ignored(photos: PhotoManifest) -> None:
    refs, rejected = discover_images(photos.root)
    listed = {ref.path for ref in refs} | {rej.path for rej in rejected}
    assert photos.ignored
    assert listed.isdisjoint(str(path) for path in photos.ignored)


def test_manifest_records_sources_faces_and_edits(photos: PhotoManifest) -> None:
    assert {photo.source for photo in photos.photos} == set(SOURCES)
    assert (photos.root / SPACES_AND_QUOTES).is_dir()
    assert any(photo.path.parent.name == SPACES_AND_QUOTES for photo in photos.photos)
    edits = [photo for photo in photos.photos if not photo.transform.startswith("original")]
    assert len(edits) == 12
    assert {photo.faces for photo in photos.photos} == {"some", "none", "unknown"}
    assert set(real_photos()) == set(SOURCES)


def test_hashes_sizes_and_order(photos: PhotoManifest) -> None:
    refs, _ = discover_images(photos.root)
    for ref in refs:
        content = Path(ref.path).read_bytes()
        assert ref.sha256 == hashlib.sha256(content).hexdigest()
        assert ref.size == len(content)
        assert ref.mtime == os.stat(ref.path).st_mtime
    assert len({ref.sha256 for ref in refs}) == len(refs)
    assert [ref.path for ref in refs] == sorted((ref.path for ref in refs), key=os.fsencode)
    assert discover_images(photos.root) == discover_images(photos.root)


def test_hash_file_reads_past_one_chunk(tmp_path: Path) -> None:
    path = tmp_path / "retina.tif"
    real_photos()["retina"].save(path, "TIFF")  # uncompressed, about 6 MB
    assert path.stat().st_size > 2 * CHUNK_SIZE
    assert hash_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_known_hash_is_reused_for_unchanged_files(photos: PhotoManifest) -> None:
    refs, _ = discover_images(photos.root)
    first, second = refs[0], refs[1]
    fake = "0" * 64
    known = {
        first.path: (first.size, first.mtime, fake),
        second.path: (second.size, second.mtime - 1.0, fake),  # touched since: re-hash
    }
    again, _ = discover_images(photos.root, known=known)
    by_path = {ref.path: ref for ref in again}
    assert by_path[first.path].sha256 == fake
    assert by_path[second.path].sha256 == second.sha256
    assert [ref.sha256 for ref in again[2:]] == [ref.sha256 for ref in refs[2:]]


def test_decode_at_max_side_keeps_original_dimensions(photos: PhotoManifest) -> None:
    for photo in photos.photos:
        decoded = decode_image(str(photo.path), max_side=512)
        assert decoded.image.mode == "RGB"
        assert (decoded.width, decoded.height) == (photo.width, photo.height), photo.path
        long_side = max(photo.width, photo.height)
        assert max(decoded.image.size) == min(512, long_side), photo.path
        scale = max(decoded.image.size) / long_side
        assert abs(decoded.image.width - photo.width * scale) <= 1
        assert abs(decoded.image.height - photo.height * scale) <= 1


def test_decode_full_size_without_max_side(photos: PhotoManifest) -> None:
    big = max(photos.photos, key=lambda photo: photo.width * photo.height)
    decoded = decode_image(str(big.path))
    assert decoded.image.size == (big.width, big.height) == (decoded.width, decoded.height)


def test_rejected_files_have_a_reason(bad: dict[str, BadCase], bad_found: Found) -> None:
    _, rejected = bad_found
    reasons = {rej.path: rej.reason for rej in rejected}
    expected = {path: case.reason for path, case in bad.items() if case.outcome == "rejected"}
    assert reasons == expected


def test_awkward_valid_files_are_indexed_and_decode(
    bad: dict[str, BadCase], bad_found: Found
) -> None:
    refs, _ = bad_found
    indexed = {ref.path for ref in refs}
    for path, case in bad.items():
        if case.outcome != "indexed":
            continue
        assert path in indexed, case.what
        decoded = decode_image(path, max_side=512)
        assert decoded.image.mode == "RGB", case.what
        assert min(decoded.image.size) >= 16, case.what


def test_broken_files_are_skipped_at_decode_with_a_reason(
    bad: dict[str, BadCase], bad_found: Found
) -> None:
    refs, _ = bad_found
    indexed = {ref.path for ref in refs}
    for path, case in bad.items():
        if case.outcome != "skipped at decode":
            continue
        assert path in indexed, case.what
        reason = _reason(path)
        if case.reason == CORRUPT:
            assert reason.startswith(CORRUPT), (case.what, reason)
        else:
            assert reason == case.reason, case.what


def test_nothing_unexpected_is_listed(bad: dict[str, BadCase], bad_found: Found) -> None:
    refs, rejected = bad_found
    listed = [ref.path for ref in refs] + [rej.path for rej in rejected]
    assert len(listed) == len(set(listed))
    ignored = {path for path, case in bad.items() if case.outcome == "ignored"}
    assert set(listed) == set(bad) - ignored


def test_truncated_jpeg_and_non_images_are_explained(
    bad: dict[str, BadCase], bad_root: Path
) -> None:
    root = bad_root
    assert _reason(str(root / "truncated.jpg")).startswith("corrupt or truncated image: ")
    assert _reason(str(root / "shopping-list.jpg")) == NOT_AN_IMAGE
    assert _reason(str(root / "IMG_0001.HEIC")) == "unsupported format: HEIC"
    assert _reason(str(root / "empty.jpg")) == "empty file"
    assert _reason(str(root / "no-such-file.jpg")) == "file not found"


def test_bomb_is_refused_before_decoding(bad: dict[str, BadCase], bad_root: Path) -> None:
    root = bad_root
    bomb = root / "bomb.png"
    assert bomb.stat().st_size < 1_000_000  # 900 megapixels declared, never inflated
    limit = get_settings().max_image_pixels
    assert _reason(str(bomb)) == (
        f"image too large: 30000x30000 pixels exceeds the {limit}-pixel limit"
    )


@pytest.fixture
def small_pixel_limit(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """Settings with a 200,000-pixel limit, restored afterwards."""
    default = Image.MAX_IMAGE_PIXELS
    monkeypatch.setenv("PHOTOINDEX_MAX_IMAGE_PIXELS", "200000")
    get_settings.cache_clear()
    yield 200_000
    monkeypatch.delenv("PHOTOINDEX_MAX_IMAGE_PIXELS")
    get_settings.cache_clear()
    Image.MAX_IMAGE_PIXELS = default


def test_limit_comes_from_settings_even_where_pillow_only_warns(
    photos: PhotoManifest, small_pixel_limit: int
) -> None:
    astronaut = next(p for p in photos.photos if p.path.name == "astronaut.jpg")
    assert small_pixel_limit < 512 * 512 < 2 * small_pixel_limit  # Pillow's warning band
    assert _reason(str(astronaut.path)) == (
        "image too large: 512x512 pixels exceeds the 200000-pixel limit"
    )


def test_orientations_decode_upright(bad: dict[str, BadCase], bad_root: Path) -> None:
    root = bad_root
    upright = orientation_source()
    for orientation in range(1, 9):
        path = root / "orientation" / f"orientation-{orientation}.jpg"
        with Image.open(path) as stored:
            stored_size = stored.size
        swapped = orientation >= 5
        assert stored_size == ((256, 384) if swapped else (384, 256)), orientation
        decoded = decode_image(str(path))
        assert (decoded.width, decoded.height) == upright.size, orientation
        assert decoded.image.size == upright.size, orientation
        assert _mean_abs_diff(decoded.image, upright) < 6, orientation
        small = decode_image(str(path), max_side=192)
        assert small.image.size == (192, 128) and (small.width, small.height) == (384, 256)


def test_odd_colour_modes_look_right(bad: dict[str, BadCase], bad_root: Path) -> None:
    root = bad_root
    sources = real_photos()
    white = (255, 255, 255)

    cutout = decode_image(str(root / "rgba-cutout.png")).image
    assert cutout.getpixel((0, 0)) == white
    assert (
        _mean_abs_diff(
            cutout.crop((192, 192, 320, 320)), sources["astronaut"].crop((192, 192, 320, 320))
        )
        < 1
    )

    palette = decode_image(str(root / "palette-transparent.png")).image
    assert palette.getpixel((10, 10)) == white  # not the magenta behind the transparency

    sixteen = decode_image(str(root / "sixteen-bit.png")).image
    assert _mean_abs_diff(sixteen, sources["camera"]) < 1  # not clipped to white

    cmyk = decode_image(str(root / "cmyk.jpg")).image
    assert _mean_abs_diff(cmyk, sources["chelsea"]) < 8

    gif = decode_image(str(root / "animated.gif")).image
    first_frame = sources["chelsea"].crop((0, 0, 300, 300))
    assert _mean_abs_diff(gif, first_frame) < _mean_abs_diff(
        gif, sources["chelsea"].crop((150, 0, 450, 300))
    )


def test_non_utf8_name_is_found_and_decodes(bad: dict[str, BadCase], bad_found: Found) -> None:
    names = [path for path in bad if os.fsencode(path).endswith(b"caf\xe9.jpg")]
    if not names:
        pytest.skip("this file system refuses non-UTF-8 file names")
    refs, _ = bad_found
    ref = next(ref for ref in refs if ref.path == names[0])
    assert "\udce9" in ref.path  # os.fsdecode's surrogate escape
    assert hash_file(ref.path) == ref.sha256
    assert decode_image(ref.path, max_side=256).width == 600


def test_symlink_cycles_terminate(bad: dict[str, BadCase], bad_root: Path) -> None:
    root = bad_root
    refs, _ = discover_images(root / "loop")  # "up" leads out to the whole folder, once
    names = [Path(ref.path).name for ref in refs]
    assert names.count("inside-loop.jpg") == 1
    assert names.count("cmyk.jpg") == 1
    assert not any("/again/" in ref.path for ref in refs)


def test_unreadable_file_is_rejected_unless_permissions_are_bypassed(
    bad_root: Path, bad_found: Found
) -> None:
    locked = bad_root / "locked.jpg"
    refs, rejected = bad_found
    try:
        with open(locked, "rb"):
            readable = True
    except PermissionError:
        readable = False
    if readable:  # root (CAP_DAC_OVERRIDE) reads chmod 000 files, so the photo is indexed
        assert str(locked) in {ref.path for ref in refs}
    else:
        assert Rejected(str(locked), "permission denied") in rejected
        assert _reason(str(locked)) == "permission denied"


def _pillow_reference(path: Path, size: tuple[int, int]) -> Image.Image:
    """What Pillow alone makes of a photo: full decode, upright, RGB, at `size`."""
    with Image.open(path) as stored:
        upright = ImageOps.exif_transpose(stored).convert("RGB")
    return upright.resize(size, Image.Resampling.BOX)


def _compare(path: Path, max_side: int | None, limit: float) -> Decoded:
    """The fastest decoder's result, checked against Pillow's: same sizes, same look."""
    fast = decode_image(str(path), max_side=max_side)
    slow = decode_image(str(path), max_side=max_side, decoder="pillow")
    assert slow.decoder == "pillow"
    assert (fast.width, fast.height) == (slow.width, slow.height), path
    assert abs(fast.image.width - slow.image.width) <= 1, path
    assert abs(fast.image.height - slow.image.height) <= 1, path
    assert _mean_abs_diff(fast.image, slow.image) < limit, (path, max_side)
    return fast


def test_jpeg_goes_through_simplejpeg_and_agrees_with_pillow(
    photos: PhotoManifest, bad_root: Path
) -> None:
    jpegs = [p.path for p in photos.photos if p.path.suffix == ".jpg"]
    jpegs += [bad_root / "progressive.jpg", bad_root / "grayscale.jpg"]
    jpegs += [bad_root / "orientation" / f"orientation-{o}.jpg" for o in range(1, 9)]
    assert len(jpegs) >= 15
    for path in jpegs:
        full = _compare(path, None, 0.5)  # same libjpeg-turbo: the same pixels, near enough
        assert full.decoder == "simplejpeg", path
        assert full.pixels.flags.c_contiguous and full.pixels.dtype == np.uint8
        # Scaled, the two pick different DCT scales and resamplers: close, not equal.
        assert _compare(path, 192, 5).decoder == "simplejpeg", path


def test_bgr_is_the_same_decode_with_channels_swapped(photos: PhotoManifest) -> None:
    path = str(next(p.path for p in photos.photos if p.path.name == "astronaut.jpg"))
    rgb = decode_image(path, max_side=256)
    bgr = decode_image(path, max_side=256, order="BGR")
    assert bgr.order == "BGR" and bgr.decoder == "simplejpeg"
    assert np.array_equal(bgr.pixels, rgb.pixels[:, :, ::-1])
    assert np.array_equal(bgr.rgb(), rgb.pixels) and np.array_equal(rgb.bgr(), bgr.pixels)


def test_other_formats_and_cmyk_go_through_pillow(bad_root: Path) -> None:
    for name in ("cmyk.jpg", "rgba-cutout.png", "scan.tif", "mask.bmp", "animated.gif"):
        decoded = decode_image(str(bad_root / name), max_side=256, order="BGR")
        assert decoded.decoder == "pillow", name
        assert decoded.order == "BGR" and decoded.pixels.shape[2] == 3, name
        assert np.array_equal(
            decoded.rgb(), np.asarray(decode_image(str(bad_root / name), max_side=256).image)
        )


@pytest.mark.parametrize("side", [4032, 4800, 3000, 6000])
def test_the_faces_decode_has_the_size_pillow_gave(tmp_path: Path, side: int) -> None:
    """Same DCT scale and size as Pillow's draft mode: crops come from today's resolution."""
    from tasks.face_inputs import FACE_SIDE, FACE_SLACK

    photo = real_photos()["coffee"].resize((side, side * 2 // 3), Image.Resampling.BILINEAR)
    path = tmp_path / f"{side}.jpg"
    photo.save(path, "JPEG", quality=85)
    fast = decode_image(str(path), FACE_SIDE, FACE_SLACK, order="BGR")
    slow = decode_image(str(path), FACE_SIDE, FACE_SLACK, order="BGR", decoder="pillow")
    assert fast.decoder == "simplejpeg"
    (fast_h, fast_w), (slow_h, slow_w) = fast.pixels.shape[:2], slow.pixels.shape[:2]
    assert max(fast_h, fast_w) == max(slow_h, slow_w) >= FACE_SIDE
    assert abs(fast_h - slow_h) <= 1 and abs(fast_w - slow_w) <= 1  # rounding of a resize


def test_a_phone_photo_decodes_at_its_half_scale_for_faces(tmp_path: Path) -> None:
    """The faces' decode of a 12 MP photo is its 1/2 DCT scale, 2016 px: today's crop source."""
    from tasks.face_inputs import FACE_SIDE, FACE_SLACK

    phone = real_photos()["chelsea"].resize((4032, 3024), Image.Resampling.BICUBIC)
    path = tmp_path / "phone.jpg"
    phone.save(path, "JPEG", quality=90)
    decoded = decode_image(str(path), FACE_SIDE, FACE_SLACK, order="BGR")
    assert decoded.decoder == "simplejpeg"
    assert decoded.pixels.shape == (1512, 2016, 3)
    assert (decoded.width, decoded.height) == (4032, 3024)
    clip = decoded.reduced(448, 1.5)  # CLIP's image from the same decode: 1/3 of it
    assert clip.pixels.shape == (504, 672, 3) and (clip.width, clip.height) == (4032, 3024)
    assert _mean_abs_diff(clip.image, _pillow_reference(path, (672, 504))) < 3
    assert decoded.reduced(2000, 1.5) is decoded
    exact = decoded.reduced(900, 1.0)  # no whole factor fits: an exact resize
    assert exact.pixels.shape == (675, 900, 3)
