"""Faults against the catalog: what a power cut leaves (an empty part), a full disk, and a
reader that looks while persons are being replaced."""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from typer.testing import CliRunner

import tasks.catalog as catalog_module
from photoindex.cli import app
from photoindex.settings import Settings, get_settings
from tasks.catalog import Catalog, status_row, write_parquet_atomic
from tasks.integrity import check_integrity, repair
from tests.environ import environ


def _status(n: int, phase: str = "embed") -> list[dict[str, Any]]:
    """Photos a phase finished (skipped: so that no vectors or faces are expected)."""
    return [
        status_row(f"sha{i}", phase, "m", f"/photos/{i}.jpg", "skipped", sha256=f"sha{i}",
                   reason="not a photo")
        for i in range(n)
    ]


def _damage(problems: list[str]) -> list[str]:
    """The problems of files: unreadable or half-written parts, a broken catalog.duckdb."""
    return [p for p in problems if p.startswith(("unreadable", "stray")) or "catalog.duckdb" in p]


def _people(n: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    persons = [
        {"person_id": f"p{i}", "face_count": 1, "representative_face_id": f"f{i}", "model": "m",
         "fingerprint": "x", "updated_at": catalog_module.now_utc()}
        for i in range(n)
    ]
    faces = [{"face_id": f"f{i}", "person_id": f"p{i}", "probability": 1.0} for i in range(n)]
    return persons, faces


def test_a_part_is_flushed_renamed_and_its_folder_flushed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        target = Path(os.readlink(f"/proc/self/fd/{fd}"))
        calls.append(("fsync", "folder" if target.is_dir() else target.name))
        real_fsync(fd)

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        calls.append(("rename", Path(dst).name))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    dest = tmp_path / "status" / "part-1.parquet"
    write_parquet_atomic(pa.Table.from_pylist(_status(2), schema=catalog_module.STATUS_SCHEMA),
                         dest)
    [(_, tmp_name), rename, dir_sync] = calls
    assert tmp_name.startswith(".tmp-") and rename == ("rename", "part-1.parquet")
    assert dir_sync == ("fsync", "folder")


@pytest.fixture
def data(tmp_path: Path) -> Iterator[Path]:
    with environ(PHOTOINDEX_DATA_DIR=str(tmp_path)):
        get_settings.cache_clear()
        yield tmp_path
    get_settings.cache_clear()


def test_a_zero_byte_part_is_skipped_named_and_moved_aside(data: Path) -> None:
    settings = Settings(data_dir=data)
    catalog = Catalog(settings)
    catalog.append("status", _status(3))
    empty = settings.catalog_dir / "status" / "part-powercut.parquet"
    empty.touch()  # what a rename without fsync can leave after a power cut

    # Every query still reads: the phases' done rows, the images, the persons.
    assert len(Catalog(settings).done_rows("embed", "m")) == 3
    assert Catalog(settings).query("SELECT count(*) AS n FROM images")[0]["n"] == 3
    Catalog(settings).write_duckdb_file()
    # The same for the persons' table (the API's /persons answered 500 over it).
    catalog.replace_people(*_people(2))
    broken = catalog.parts("persons")[0]
    broken.write_bytes(b"")
    assert Catalog(settings).persons() == []
    assert Catalog(settings).query("SELECT count(*) AS n FROM person_faces")[0]["n"] == 2
    catalog.replace_people([], [])

    problems = check_integrity(settings)
    assert [p for p in problems if str(empty) in p and "--repair" in p], problems

    runner = CliRunner()
    found = runner.invoke(app, ["check"])
    assert found.exit_code == 1 and "part-powercut.parquet" in found.output
    fixed = runner.invoke(app, ["check", "--repair"])
    assert fixed.exit_code == 0, fixed.output
    assert "moved" in fixed.output and not empty.exists()
    assert (data / "quarantine" / "status" / "part-powercut.parquet").exists()
    assert Catalog(settings).query("SELECT count(*) AS n FROM status")[0]["n"] == 3


def test_a_leftover_wal_or_a_viewless_duckdb_file_is_a_problem(data: Path) -> None:
    settings = Settings(data_dir=data)
    Catalog(settings).append("status", _status(1))
    dest = Catalog(settings).write_duckdb_file()
    assert check_integrity(settings) == []
    dest.unlink()
    duckdb.connect(str(dest)).close()  # what the full disk installed: a file without views
    (data / "catalog.duckdb.wal").write_bytes(b"\0" * 10)
    problems = check_integrity(settings)
    assert any("lacks the views" in p for p in problems), problems
    assert any(".wal is left over" in p for p in problems), problems
    assert repair(settings)[-1] == f"rewrote {dest}"
    assert check_integrity(settings) == []


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB tmpfs: a disk that fills up (needs root)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path, leave_kb: int) -> Path:
    """Fill the disk, then free `leave_kb`: room to create a file but not to finish it."""
    filler = disk / "filler"
    f = open(filler, "wb")  # noqa: SIM115
    try:
        while True:
            f.write(b"\0" * 4096)
            f.flush()
    except OSError:
        pass
    with contextlib.suppress(OSError):
        f.close()
    os.truncate(filler, max(0, filler.stat().st_size - leave_kb * 1024))
    return filler


# 32-256 kB free is where the old code installed a catalog.duckdb without views and left a WAL.
@pytest.mark.parametrize("leave_kb", [0, 16, 64, 200])
def test_a_full_disk_leaves_the_old_catalog_readable(small_disk: Path, leave_kb: int) -> None:
    settings = Settings(data_dir=small_disk / "data")
    catalog = Catalog(settings)
    catalog.append("status", _status(5))
    catalog.replace_people(*_people(3))
    dest = catalog.write_duckdb_file()
    before = dest.read_bytes()
    filler = _fill(small_disk, leave_kb)

    with pytest.raises((OSError, duckdb.Error)):
        catalog.write_duckdb_file()
    with pytest.raises(OSError):
        catalog.append("status", _status(50_000))
    with pytest.raises(OSError):
        catalog.replace_people(*_people(50_000))

    # The old file is in place, whole, with its views; nothing half-written is left.
    assert dest.read_bytes() == before
    con = duckdb.connect(str(dest), read_only=True)
    try:
        views = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views()").fetchall()}
        assert views >= {"images", "status", "persons", "person_faces"}
    finally:
        con.close()
    leftovers = [p.name for p in settings.data_dir.rglob("*") if p.name.startswith(".tmp-")]
    assert leftovers == []
    assert not (settings.data_dir / "catalog.duckdb.wal").exists()
    # Every query reads the catalog as it was before the disk filled.
    assert Catalog(settings).query("SELECT count(*) AS n FROM images")[0]["n"] == 5
    assert Catalog(settings).query("SELECT count(*) AS n FROM persons")[0]["n"] == 3
    filler.unlink()
    assert _damage(check_integrity(settings)) == []


def test_readers_never_see_persons_and_their_faces_from_different_runs(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    Catalog(settings).replace_people(*_people(1))
    mismatches: list[tuple[int, int]] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            [row] = Catalog(settings).query(
                "SELECT (SELECT count(*) FROM persons) AS p, "
                "(SELECT count(*) FROM person_faces) AS f"
            )
            if row["p"] != row["f"]:
                mismatches.append((row["p"], row["f"]))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for n in range(2, 60):  # each clustering run: n persons with one face each
            Catalog(settings).replace_people(*_people(n))
            time.sleep(0.005)
    finally:
        stop.set()
        reader.join(30)
    assert mismatches == []
    assert Catalog(settings).query("SELECT count(*) AS n FROM persons")[0]["n"] == 59
    # The old single-table replace still works and keeps the other table.
    persons, _ = _people(3)
    Catalog(settings).replace("persons", persons)
    assert Catalog(settings).query("SELECT count(*) AS n FROM person_faces")[0]["n"] == 59
