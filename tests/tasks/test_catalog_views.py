"""The catalog's views: the latest row of an item wins, tombstones hide faces, and a
view follows new parts at once (it is cached per set of parts)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from photoindex.settings import Settings
from tasks.catalog import Catalog, now_utc, status_row


def catalog(tmp_path: Path) -> Catalog:
    return Catalog(Settings(data_dir=tmp_path))


def face(face_id: str, seconds: float, removed: bool = False) -> dict[str, Any]:
    return {
        "face_id": face_id, "image_sha256": "a" * 64, "image_path": "/lib/a.jpg",
        "bbox": [0.0, 0.0, 10.0, 10.0], "score": 0.9, "landmarks": [0.0] * 10,
        "embedding": [1.0, 0.0], "model": "sface", "crop_path": None,
        "indexed_at": now_utc() + timedelta(seconds=seconds), "removed": removed,
    }  # fmt: skip


def test_the_latest_status_row_of_a_key_wins_across_parts(tmp_path: Path) -> None:
    cat = catalog(tmp_path)
    cat.append("status", [status_row("k1", "embed", "m", "/lib/a.jpg", "failed", reason="io")])
    cat.append("status", [status_row("k2", "embed", "m", "/lib/b.jpg", "indexed")])
    assert cat.done_rows("embed", "m").keys() == {"k2"}  # failed is retried, not done

    cat.append("status", [status_row("k1", "embed", "m", "/lib/a.jpg", "indexed")])
    rows = cat.query("SELECT key, status FROM status WHERE phase = 'embed' ORDER BY key")
    assert rows == [{"key": "k1", "status": "indexed"}, {"key": "k2", "status": "indexed"}]
    assert cat.done_rows("embed", "m").keys() == {"k1", "k2"}

    cat.append("status", [status_row("k2", "embed", "m", "/lib/b.jpg", "removed")])
    assert cat.done_rows("embed", "m").keys() == {"k1"}
    # the same key under another phase or model is another item
    cat.append("status", [status_row("k2", "faces", "m", "/lib/b.jpg", "indexed")])
    assert cat.done_rows("faces", "m").keys() == {"k2"}
    assert cat.done_rows("embed", "other-model") == {}


def test_a_part_written_twice_shows_its_rows_once(tmp_path: Path) -> None:
    cat = catalog(tmp_path)
    rows = [status_row("k1", "embed", "m", "/lib/a.jpg", "indexed")]
    cat.append("status", rows)
    cat.append("status", rows)  # a crash between the write and its record: written again
    assert cat.query("SELECT count(*) AS n FROM status") == [{"n": 1}]


def test_a_tombstone_hides_a_face_until_a_later_row_brings_it_back(tmp_path: Path) -> None:
    cat = catalog(tmp_path)
    cat.append("faces", [face("f1", 0), face("f2", 0)])
    assert [r["face_id"] for r in cat.query("SELECT face_id FROM faces ORDER BY 1")] == [
        "f1", "f2",
    ]  # fmt: skip
    cat.append("faces", [face("f1", 1, removed=True)])
    assert [r["face_id"] for r in cat.query("SELECT face_id FROM faces")] == ["f2"]
    assert cat.faces_for_model("sface").column("face_id").to_pylist() == ["f2"]
    assert "removed" not in cat.query("SELECT * FROM faces")[0]  # not part of the view

    cat.append("faces", [face("f1", 2)])  # the photo came back to the library
    assert sorted(r["face_id"] for r in cat.query("SELECT face_id FROM faces")) == ["f1", "f2"]


def test_empty_tables_read_as_empty_with_their_columns(tmp_path: Path) -> None:
    cat = catalog(tmp_path)
    assert cat.query("SELECT * FROM faces") == []
    assert cat.done_rows("embed", "m") == {}
    assert cat.present_shas() == set()
    assert cat.faces_for_model("sface").column_names == ["face_id", "embedding"]


def test_a_manifest_replaced_under_its_own_name_is_read_anew(tmp_path: Path) -> None:
    cat = catalog(tmp_path)
    cat.write_manifest("/lib", [("/lib/a.jpg", "a" * 64, 10, 1.0)])
    assert cat.present_shas() == {"a" * 64}
    cat.write_manifest("/lib", [("/lib/b.jpg", "b" * 64, 12, 2.0)])
    assert cat.present_shas() == {"b" * 64}
    assert cat.known_files() == {"/lib/b.jpg": (12, 2.0, "b" * 64)}
