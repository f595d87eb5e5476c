"""Files changing between runs: added, deleted, modified and renamed photos."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tasks.discover import hash_file
from tasks.vectors import point_id
from tests.photos import SPACES_AND_QUOTES, make_photo_folder, real_photos, save_photo
from tests.resilience.helpers import (
    assert_healthy,
    index_in_process,
    snapshot,
    use_data_dir,
)

pytestmark = pytest.mark.usefixtures("prefect_harness", "data_dir")


def test_added_deleted_modified_and_renamed_photos(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """New and changed content is indexed; gone content leaves search, faces and persons."""
    folder = tmp_path_factory.mktemp("changing")
    make_photo_folder(folder, n_derived=2)  # the originals, a mirrored astronaut, half of t1
    deleted = folder / SPACES_AND_QUOTES / "group_t1.jpg"  # six people
    modified = folder / "2019/summer/astronaut.jpg"
    renamed = folder / SPACES_AND_QUOTES / "tom_hanks.png"
    moved_to = folder / "people/tom.png"
    added = folder / "new/astronaut-face.jpg"

    with use_data_dir(tmp_path_factory.mktemp("changing-data")) as settings:
        from tasks.catalog import Catalog
        from tasks.models.registry import clip_embedder
        from tasks.vectors import VectorStore, close_clients

        q = Catalog(settings).query
        index_in_process(folder)
        before = snapshot(settings)
        gone = {hash_file(deleted), hash_file(modified)}
        faces_sql = "SELECT face_id, crop_path FROM faces WHERE image_sha256 = ?"
        faces_of = {
            sha: {r["face_id"]: r["crop_path"] for r in q(faces_sql, (sha,))}
            for sha in (*gone, hash_file(renamed))
        }
        old_faces = faces_of[hash_file(deleted)] | faces_of[hash_file(modified)]
        assert len(faces_of[hash_file(deleted)]) == 6 and faces_of[hash_file(modified)]
        assert len(faces_of[hash_file(renamed)]) == 1
        assert set(old_faces) & {f for p in before.persons for f in p}, "no person to shrink"

        photos = real_photos()
        deleted.unlink()
        save_photo(photos["astronaut"], modified, quality=70)  # same photo, new content
        moved_to.parent.mkdir()
        shutil.move(renamed, moved_to)
        save_photo(photos["astronaut"].crop((140, 20, 360, 260)), added)
        new = {hash_file(modified), hash_file(added)}
        assert not new & before.indexed

        embed, faces, cluster = index_in_process(folder)
        after = snapshot(settings)
        store = VectorStore(clip_embedder(settings).model_id, settings)
        try:
            point = store.payloads([hash_file(moved_to)])
        finally:
            close_clients()
        images = {r["sha256"]: r["path"] for r in q("SELECT sha256, path FROM images")}
        person_faces = {r["face_id"] for r in q("SELECT face_id FROM person_faces")}
        moved_sql = "SELECT face_id, image_path FROM faces WHERE image_sha256 = ?"
        moved_faces = {r["face_id"]: r["image_path"] for r in q(moved_sql, (hash_file(moved_to),))}
        assert_healthy(settings)

    # Only the new content was computed; the renamed photo was recognised by its content.
    assert (embed.processed, faces.processed) == (2, 2), (embed, faces)
    assert embed.reused == faces.reused == len(before.indexed) - 2
    assert embed.failed == faces.failed == 0 and cluster.processed == 1
    # Search, the images view, faces and persons: the new in, the gone out.
    assert after.indexed == (before.indexed - gone) | new
    assert after.points == {point_id(sha) for sha in after.indexed}
    assert not gone & set(images) and new <= set(images)
    assert not set(old_faces) & after.faces
    assert not set(old_faces) & person_faces
    assert not [c for c in old_faces.values() if Path(c).exists()], "crops of gone faces remain"
    assert after.faces - before.faces, "the modified and added photos' faces are new faces"
    # The renamed photo: same faces, same point, new path in the catalog and the vector store.
    assert set(moved_faces) == set(faces_of[hash_file(moved_to)])
    assert images[hash_file(moved_to)] == str(moved_to)
    assert point[hash_file(moved_to)]["path"] == str(moved_to)
    assert set(moved_faces.values()) == {str(moved_to)}
