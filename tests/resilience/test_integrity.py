"""`check_integrity` names each kind of damage, and readers never see a half-written part."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from photoindex.settings import Settings
from tasks.catalog import Catalog, now_utc
from tests.resilience.conftest import Clean

pytestmark = pytest.mark.usefixtures("prefect_harness", "data_dir")


def test_a_temp_part_is_invisible_to_readers(clean: Clean) -> None:
    """A part being written (temp name) is neither read nor mistaken for damage until it stays."""
    from tasks.integrity import check_integrity

    settings = Settings(data_dir=clean.data)
    catalog = Catalog(settings)
    before = catalog.query("SELECT count(*) AS n FROM status")[0]["n"]
    temp = settings.catalog_dir / "status" / ".tmp-abc123.parquet.part"
    temp.write_bytes(b"PAR1 half a footer")  # what a killed writer leaves behind
    try:
        assert catalog.query("SELECT count(*) AS n FROM status")[0]["n"] == before
        problems = check_integrity(settings)
        assert [p for p in problems if "stray temporary catalog file" in p] == [
            f"stray temporary catalog file (an interrupted write): {temp}"
        ]
        assert not [p for p in problems if "unreadable" in p]
    finally:
        temp.unlink()


def test_each_kind_of_damage_is_named(clean: Clean, tmp_path: Path) -> None:
    """Orphan and missing crops, vectors and faces without rows, broken persons and parts."""
    from tasks.integrity import check_integrity
    from tasks.models.registry import clip_embedder
    from tasks.vectors import VectorStore, close_clients, point_id

    data = tmp_path / "data"
    shutil.copytree(clean.data, data)
    settings = Settings(data_dir=data)
    catalog = Catalog(settings)
    # Crop paths are absolute: point the copy's face rows at the copy's crops.
    faces = catalog.query("SELECT * FROM faces ORDER BY face_id")
    rows = [{**f, "crop_path": f["crop_path"].replace(str(clean.data), str(data))} for f in faces]
    shutil.rmtree(settings.catalog_dir / "faces")
    catalog.append("faces", rows)
    assert check_integrity(settings) == []

    Path(rows[0]["crop_path"]).unlink()
    orphan = settings.crops_dir / "zz" / "zz-not-a-face.jpg"
    orphan.parent.mkdir(parents=True)
    shutil.copy(rows[1]["crop_path"], orphan)
    (settings.crops_dir / "zz" / "half.jpg.tmp").write_bytes(b"\xff\xd8")
    stranger = {**rows[2], "face_id": "f" * 20, "image_sha256": "0" * 64, "indexed_at": now_utc()}
    catalog.append("faces", [stranger])
    persons = catalog.query("SELECT * FROM persons")
    catalog.replace("persons", [{**persons[0], "face_count": persons[0]["face_count"] + 1}])
    indexed_sql = "SELECT sha256 FROM images WHERE status = 'indexed'"
    indexed = sorted(r["sha256"] for r in catalog.query(indexed_sql))
    store = VectorStore(clip_embedder(settings).model_id, settings)
    try:
        vector = store.vectors([indexed[2]])[indexed[2]][None, :]
        store.upsert(vector, [{"sha256": "1" * 64, "path": "/nowhere.jpg"}])
        store.delete([indexed[0]])
        store.set_paths({indexed[1]: "/somewhere/else.jpg"})
    finally:
        close_clients()

    problems = "\n".join(check_integrity(settings))
    for expected in [
        f"face row without its crop file: {rows[0]['face_id']}",
        f"crop file of no face row (an orphan): {orphan}",
        "stray temporary crop file (an interrupted write): ",
        f"face of a photo that is not an indexed image: {'f' * 20}",
        "faces of a photo the faces phase never finished (an interrupted run): " + "0" * 64,
        f"person whose face count differs from its members: {persons[0]['person_id']}",
        "person membership of an unknown person: ",  # the other persons were dropped
        f"indexed image without a vector ({clip_embedder(settings).model_id}): {indexed[0]}",
        f"vector of an image not indexed in the catalog ({clip_embedder(settings).model_id}): "
        + point_id("1" * 64),
        f"{indexed[1]}: /somewhere/else.jpg",
    ]:
        assert expected in problems, f"{expected!r} not in:\n{problems}"

    broken = settings.catalog_dir / "status" / "broken.parquet"
    broken.write_bytes(b"PAR1" + bytes(100))
    problems = "\n".join(check_integrity(settings))
    assert f"unreadable catalog part {broken}" in problems
