"""Capture time: EXIF DateTimeOriginal when the photo has it, else the file's time."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from PIL import Image

from tasks.decode import DATETIME_ORIGINAL, EXIF_IFD, capture_time, decode_image, parse_exif_time
from tests.clip_tiny import tiny_settings
from tests.photos import real_photos, save_photo


def test_exif_date_time_original_is_the_capture_time(tmp_path: Path) -> None:
    photo = real_photos()["coffee"]
    exif = Image.Exif()
    exif.get_ifd(EXIF_IFD)[DATETIME_ORIGINAL] = "2019:08:17 18:42:05"
    path = tmp_path / "coffee.jpg"
    photo.save(path, "JPEG", quality=90, exif=exif.tobytes())
    os.utime(path, (1_700_000_000, 1_700_000_000))

    decoded = decode_image(str(path), max_side=448)
    assert decoded.taken == datetime(2019, 8, 17, 18, 42, 5)
    fields = capture_time(decoded.taken, path.stat().st_mtime)
    assert fields == {"taken_at": "2019-08-17T18:42:05", "taken_at_source": "exif"}


def test_without_exif_the_file_time_is_used(tmp_path: Path) -> None:
    path = tmp_path / "astronaut.png"
    save_photo(real_photos()["astronaut"], path, fmt="PNG")
    os.utime(path, (1_600_000_000, 1_600_000_000))

    decoded = decode_image(str(path), max_side=448)
    assert decoded.taken is None
    fields = capture_time(decoded.taken, path.stat().st_mtime)
    assert fields["taken_at_source"] == "file"
    assert fields["taken_at"] == datetime.fromtimestamp(1_600_000_000).isoformat()


def test_blank_or_broken_exif_times_are_no_time() -> None:
    assert parse_exif_time("0000:00:00 00:00:00") is None
    assert parse_exif_time("    :  :     :  :  ") is None
    assert parse_exif_time(b"2021:07:04 15:30:00\x00") == datetime(2021, 7, 4, 15, 30)
    assert parse_exif_time(12) is None


def test_points_stored_without_a_capture_time_get_it_without_re_embedding(
    tiny_clip: tuple[Path, Path], tmp_path: Path
) -> None:
    """A store migrated from local mode has no capture times: the next embed phase adds them."""
    import numpy as np

    from tasks.discover import hash_file
    from tasks.embed import EmbedPhase
    from tasks.models.registry import clip_embedder
    from tasks.vectors import VectorStore, close_clients
    from tests.tasks.test_vectors import write_local_mode

    folder = tmp_path / "photos"
    folder.mkdir()
    exif = Image.Exif()
    exif.get_ifd(EXIF_IFD)[DATETIME_ORIGINAL] = "2015:05:01 08:00:00"
    real_photos()["coffee"].save(folder / "coffee.jpg", "JPEG", exif=exif.tobytes())
    save_photo(real_photos()["rocket"], folder / "rocket.png", fmt="PNG")
    settings = tiny_settings(tiny_clip, data_dir=tmp_path / "data")
    model_id = clip_embedder(settings).model_id
    shas = {name: hash_file(folder / name) for name in ("coffee.jpg", "rocket.png")}
    old: list[dict[str, object]] = [{"path": str(folder / n), "sha256": h} for n, h in shas.items()]
    vectors = np.eye(2, clip_embedder(settings).dim, dtype=np.float32)
    write_local_mode(settings.qdrant_dir, model_id, vectors, old)
    try:
        phase = EmbedPhase(folder, settings)
        items, _ = phase.discover()  # dates the undated points it finds
        stored = VectorStore(model_id, settings).payloads(shas.values())
        assert stored[shas["coffee.jpg"]]["taken_at"] == "2015-05-01T08:00:00"
        assert stored[shas["rocket.png"]]["taken_at_source"] == "file"
        again = VectorStore(model_id, settings).vectors(shas.values())
        np.testing.assert_allclose(again[shas["coffee.jpg"]], vectors[0], atol=1e-6)
        assert phase.date_undated(items) == 0  # once
    finally:
        close_clients()
