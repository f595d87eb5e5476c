"""One decode for both photo phases: the embed phase leaves found faces for the faces phase."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from photoindex.settings import Settings
from tasks.discover import ImageRef
from tasks.embed import EmbedPhase
from tasks.face_inputs import FaceInput, FaceInputs, clear_inputs, find_faces, inputs_root
from tasks.faces import FacesPhase
from tests.photos import CORRUPT, real_photos

pytestmark = pytest.mark.usefixtures("data_dir")


def _library(root: Path) -> Path:
    """Real photos with and without faces, one of them upside down by EXIF, and a cut JPEG."""
    photos = real_photos()
    root.mkdir(parents=True)
    photos["group_t1"].save(root / "group.jpg", "JPEG", quality=90)
    photos["coffee"].save(root / "coffee.jpg", "JPEG", quality=90)
    exif = photos["astronaut"].getexif()
    exif[0x0112] = 3
    photos["astronaut"].rotate(180).save(root / "astronaut.jpg", "JPEG", quality=90, exif=exif)
    cut = io.BytesIO()
    photos["chelsea"].save(cut, "JPEG", quality=90)
    (root / "cut.jpg").write_bytes(cut.getvalue()[: len(cut.getvalue()) // 2])
    return root


def _discover(phase: EmbedPhase | FacesPhase) -> list[ImageRef]:
    items, rejected = phase.discover()
    assert rejected == []
    return sorted(items, key=lambda ref: ref.path)


def _same_faces(left: FaceInput, right: FaceInput) -> None:
    assert (left.reason, left.scale) == (right.reason, right.scale)
    assert len(left.faces) == len(right.faces)
    for a, b in zip(left.faces, right.faces, strict=True):
        assert np.allclose(a.bbox, b.bbox) and np.allclose(a.kps, b.kps)
        assert a.score == pytest.approx(b.score, abs=1e-6)
        assert a.crop.dtype == np.uint8 and np.array_equal(a.crop, b.crop)


def test_the_faces_phase_works_from_the_embed_phases_decode(
    tmp_path: Path, settings: Settings
) -> None:
    folder = _library(tmp_path / "library")
    embed = EmbedPhase(folder, settings, faces=True)
    items = _discover(embed)
    assert embed.faces_todo == {ref.sha256 for ref in items}
    prepared = embed.read(items)
    assert [Path(ref.path).name for ref, _ in prepared.skipped] == ["cut.jpg"]
    assert prepared.pixels is not None and prepared.pixels.shape[0] == 3
    computed = embed.compute(prepared)

    faces = FacesPhase(folder, settings)
    # What the faces phase finds when it decodes each photo itself.
    expected = {ref.sha256: find_faces(faces.decode_one(ref), faces.analyzer) for ref in items}
    assert len(expected[_by_name(items, "group.jpg").sha256].faces) >= 4
    assert len(expected[_by_name(items, "astronaut.jpg").sha256].faces) == 1
    assert expected[_by_name(items, "coffee.jpg").sha256].faces == []
    reason = expected[_by_name(items, "cut.jpg").sha256].reason
    assert reason is not None and reason.startswith(CORRUPT)
    # The progress counts what it looked in and found, for the faces phase's cost.
    assert embed.findings(computed) == (4, sum(len(e.faces) for e in expected.values()))

    # The photos are gone; the faces phase needs only what the embed phase left.
    for ref in items:
        Path(ref.path).write_bytes(b"not a photo any more")
    loaded = faces.read(items)
    assert loaded.decoded == 0
    assert [ref.path for ref, _ in loaded.skipped] == [_by_name(items, "cut.jpg").path]
    for ref, scale, found in loaded.photos:
        _same_faces(FaceInput(scale, found), expected[ref.sha256])

    outcome = faces.write(faces.compute(loaded))
    statuses = {Path(r["path"]).name: (r["status"], r.get("n_faces")) for r in outcome.rows}
    assert statuses["coffee.jpg"] == ("indexed", 0)
    assert statuses["cut.jpg"][0] == "skipped"
    assert statuses["astronaut.jpg"] == ("indexed", 1)
    # Each photo's entry is deleted once its faces are written.
    assert not [ref for ref in items if faces.inputs.path(ref.sha256).exists()]


def test_without_an_entry_the_faces_phase_decodes_the_photo(
    tmp_path: Path, settings: Settings
) -> None:
    folder = _library(tmp_path / "library")
    faces = FacesPhase(folder, settings)
    items = _discover(faces)
    loaded = faces.read(items)
    assert loaded.decoded == len(items) == 4
    assert sum(len(found) for _, _, found in loaded.photos) >= 5


def test_embed_leaves_faces_only_for_photos_the_faces_phase_will_do(
    tmp_path: Path, settings: Settings
) -> None:
    folder = _library(tmp_path / "library")
    alone = EmbedPhase(folder, settings)  # a session without faces: nothing left behind
    alone.read(_discover(alone))
    faces = FacesPhase(folder, settings)
    assert not faces.inputs.root.exists()

    items = _discover(faces)
    done = [_by_name(items, "group.jpg")]
    faces.catalog.append(
        "status",
        [faces.status(r.sha256, r.path, "indexed", sha256=r.sha256, n_faces=0) for r in done],
        name="faces",
    )
    embed = EmbedPhase(folder, settings, faces=True)
    embed.read(_discover(embed))
    left = {ref.sha256 for ref in items if faces.inputs.path(ref.sha256).exists()}
    assert left == {ref.sha256 for ref in items} - {done[0].sha256}

    clear_inputs(faces.settings)
    assert not inputs_root(faces.settings).exists()


def test_a_damaged_entry_counts_as_missing(tmp_path: Path, settings: Settings) -> None:
    folder = _library(tmp_path / "library")
    faces = FacesPhase(folder, settings)
    ref = _by_name(_discover(faces), "astronaut.jpg")
    store = FaceInputs(faces.settings, "test-damaged")
    store.put(ref.sha256, find_faces(faces.decode_one(ref), faces.analyzer))
    assert store.get(ref.sha256) is not None
    store.path(ref.sha256).write_bytes(b"PK\x03\x04 half a zip")
    assert store.get(ref.sha256) is None
    store.drop([ref.sha256, ref.sha256])
    assert not store.path(ref.sha256).exists()


def _by_name(items: list[ImageRef], name: str) -> ImageRef:
    return next(ref for ref in items if Path(ref.path).name == name)
