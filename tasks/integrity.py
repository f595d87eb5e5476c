"""Catalog integrity: do the catalog's tables, the face crops and the vector store agree?

`check_integrity` reads everything a session writes and lists each disagreement in
words a person can act on; an empty list means the data folder is healthy. Run it
while no session is indexing into the data folder: a live session legitimately has
a temporary file open and batches half-recorded.
"""

from __future__ import annotations

import logging
import shutil
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from photoindex.settings import Settings, get_settings
from tasks.catalog import CROP_TEMP_GLOB, PARQUET_TEMP_GLOB, Catalog, fsync_dir
from tasks.vectors import close_clients, collection_name, point_id, stored_points

#: At most this many examples are named per kind of problem; the rest are counted.
EXAMPLES = 5
#: Where `repair` moves what it takes out of the catalog, under the data folder.
QUARANTINE = "quarantine"
DUCKDB_VIEWS = {"images", "status", "faces", "files", "persons", "person_faces"}

logger = logging.getLogger(__name__)


def check_integrity(settings: Settings | None = None, store_wait_s: float = 0.0) -> list[str]:
    """The problems found in a data folder's catalog, crops and vectors; empty when healthy.

    Checks that every Parquet part is whole and no temporary part is left behind; that
    the catalog's views hold one row per status key and per face; that every face row
    belongs to an image indexed by the embed phase, matches its photo's face count and
    path, and has its crop; that every crop file belongs to a face row; that persons
    and their faces agree; and that the vector store holds exactly one point per
    indexed image, with the catalog's path. A local vector store is opened for the
    check and this process's clients are closed after it, releasing its lock; while
    another process holds it, this waits up to `store_wait_s`, then raises
    `tasks.vectors.VectorStoreBusy`.
    """
    settings = settings or get_settings()
    problems = _files(settings) + _duckdb_file(settings)
    catalog = Catalog(settings)  # its views skip unreadable parts: check the rest anyway
    problems += _views(catalog)
    problems += _faces(catalog, settings)
    problems += _persons(catalog)
    problems += _vectors(catalog, settings, store_wait_s)
    return problems


def _named(kind: str, items: Iterable[str]) -> list[str]:
    """One problem line per item, up to `EXAMPLES`, then a count of the rest."""
    listed = sorted(items)
    out = [f"{kind}: {item}" for item in listed[:EXAMPLES]]
    if len(listed) > EXAMPLES:
        out.append(f"{kind}: ... and {len(listed) - EXAMPLES} more")
    return out


def _files(settings: Settings) -> list[str]:
    """Every Parquet part readable in full; no temporary part or crop left behind."""
    problems: list[str] = []
    root = settings.catalog_dir
    if root.is_dir():
        problems += _named(
            "stray temporary catalog file (an interrupted write)",
            (str(p) for p in root.rglob(PARQUET_TEMP_GLOB)),
        )
        for part in sorted(root.rglob("*.parquet")):
            try:
                pq.read_table(part)
            except (OSError, pa.ArrowException) as err:
                problems.append(
                    f"unreadable catalog part {part} ({err}); queries skip it, and "
                    "`photoindex check --repair` moves it aside"
                )
    if settings.crops_dir.is_dir():
        problems += _named(
            "stray temporary crop file (an interrupted write)",
            (str(p) for p in settings.crops_dir.rglob(CROP_TEMP_GLOB)),
        )
    return problems


def _unreadable_parts(settings: Settings) -> list[Path]:
    parts = []
    for part in sorted(settings.catalog_dir.rglob("*.parquet")):
        try:
            pq.read_table(part)
        except (OSError, pa.ArrowException):
            parts.append(part)
    return parts


def _duckdb_file(settings: Settings) -> list[str]:
    """`catalog.duckdb`, if there is one, opens and has every view; no WAL or temp file left."""
    dest = settings.data_dir / "catalog.duckdb"
    problems = _named(
        "stray temporary or WAL file of catalog.duckdb (an interrupted write)",
        (str(p) for p in settings.data_dir.glob(".tmp-catalog.duckdb*")),
    )
    if dest.with_name(dest.name + ".wal").exists():
        problems.append(f"{dest}.wal is left over from an interrupted write")
    if not dest.exists():
        return problems
    try:
        con = duckdb.connect(str(dest), read_only=True)
        try:
            rows = con.execute("SELECT view_name FROM duckdb_views()").fetchall()
        finally:
            con.close()
    except duckdb.Error as err:
        return [*problems, f"{dest} cannot be opened: {err}"]
    found = {str(r[0]) for r in rows}
    if missing := DUCKDB_VIEWS - found:
        problems.append(f"{dest} lacks the views {', '.join(sorted(missing))}")
    return problems


def repair(settings: Settings | None = None) -> list[str]:
    """Move unreadable and half-written catalog parts aside, into `DATA_DIR/quarantine`,
    and rewrite `catalog.duckdb`; returns what was done, one line each.

    The work those parts recorded is done again by the next run of the folder.
    """
    settings = settings or get_settings()
    root = settings.catalog_dir
    done: list[str] = []
    if root.is_dir():
        moved = _unreadable_parts(settings) + sorted(root.rglob(PARQUET_TEMP_GLOB))
        for part in moved:
            aside = settings.data_dir / QUARANTINE / part.relative_to(root)
            aside.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(part, aside)
            fsync_dir(part.parent)
            done.append(f"moved {part} to {aside}")
    for stray in settings.data_dir.glob(".tmp-catalog.duckdb*"):
        stray.unlink()
        done.append(f"deleted {stray}")
    dest = Catalog(settings).write_duckdb_file()
    done.append(f"rewrote {dest}")
    return done


def _views(catalog: Catalog) -> list[str]:
    """The views show each status key and each face once, however often they were written."""
    problems: list[str] = []
    for sql, what in [
        (
            "SELECT phase || ' ' || key AS k, count(*) AS n FROM status "
            "GROUP BY phase, model, key HAVING count(*) > 1",
            "status key shown more than once",
        ),
        (
            "SELECT face_id AS k, count(*) AS n FROM faces GROUP BY face_id HAVING count(*) > 1",
            "face shown more than once",
        ),
        (
            "SELECT sha256 || ' ' || clip_model AS k, count(*) AS n FROM images "
            "WHERE sha256 IS NOT NULL GROUP BY sha256, clip_model HAVING count(*) > 1",
            "image shown more than once",
        ),
    ]:
        problems += _named(what, (f"{r['k']} ({r['n']} rows)" for r in catalog.query(sql)))
    return problems


def _faces(catalog: Catalog, settings: Settings) -> list[str]:
    """Face rows, their photos, their counts and their crops agree."""
    problems: list[str] = []
    indexed = {
        r["sha256"] for r in catalog.query("SELECT sha256 FROM images WHERE status = 'indexed'")
    }
    faces = catalog.query("SELECT face_id, image_sha256, image_path, model, crop_path FROM faces")
    problems += _named(
        "face of a photo that is not an indexed image",
        (
            f"{f['face_id']} (photo {f['image_sha256']})"
            for f in faces
            if f["image_sha256"] not in indexed
        ),
    )
    done = {
        (r["key"], r["model"]): r
        for r in catalog.query(
            "SELECT key, model, path, n_faces FROM status "
            "WHERE phase = 'faces' AND status = 'indexed'"
        )
    }
    found = Counter((f["image_sha256"], f["model"]) for f in faces)
    problems += _named(
        "faces of a photo the faces phase never finished (an interrupted run)",
        (f"{sha} ({n} faces)" for (sha, model), n in found.items() if (sha, model) not in done),
    )
    problems += _named(
        "photo whose face count differs from its face rows",
        (
            f"{row['path']}: {row['n_faces']} recorded, {found.get(key, 0)} face rows"
            for key, row in done.items()
            if (row["n_faces"] or 0) != found.get(key, 0)
        ),
    )
    problems += _named(
        "face row with an out-of-date photo path",
        (
            f"{f['face_id']}: {f['image_path']} (the photo is now {row['path']})"
            for f in faces
            if (row := done.get((f["image_sha256"], f["model"]))) is not None
            and f["image_path"] != row["path"]
        ),
    )
    crops = {str(Path(f["crop_path"]).resolve()) for f in faces if f["crop_path"]}
    problems += _named(
        "face row without its crop file",
        (
            f"{f['face_id']}: {f['crop_path']}"
            for f in faces
            if not f["crop_path"] or not Path(f["crop_path"]).is_file()
        ),
    )
    if settings.crops_dir.is_dir():
        problems += _named(
            "crop file of no face row (an orphan)",
            (str(p) for p in settings.crops_dir.rglob("*.jpg") if str(p.resolve()) not in crops),
        )
    return problems


def _persons(catalog: Catalog) -> list[str]:
    """Every person's faces exist and its face count is right."""
    problems: list[str] = []
    problems += _named(
        "person membership of a face not in the catalog",
        (
            f"{r['person_id']}: {r['face_id']}"
            for r in catalog.query(
                "SELECT person_id, face_id FROM person_faces "
                "WHERE face_id NOT IN (SELECT face_id FROM faces)"
            )
        ),
    )
    problems += _named(
        "person whose face count differs from its members",
        (
            f"{r['person_id']}: {r['face_count']} recorded, {r['n']} members"
            for r in catalog.query(
                "SELECT p.person_id, p.face_count, count(pf.face_id) AS n FROM persons p "
                "LEFT JOIN person_faces pf USING (person_id) GROUP BY ALL "
                "HAVING count(pf.face_id) <> p.face_count"
            )
        ),
    )
    problems += _named(
        "person membership of an unknown person",
        (
            f"{r['person_id']}: {r['face_id']}"
            for r in catalog.query(
                "SELECT person_id, face_id FROM person_faces "
                "WHERE person_id NOT IN (SELECT person_id FROM persons)"
            )
        ),
    )
    return problems


def _vectors(catalog: Catalog, settings: Settings, wait_s: float) -> list[str]:
    """One point per indexed image in each model's collection, carrying the catalog's path."""
    expected: dict[str, dict[str, str]] = defaultdict(dict)  # collection -> point id -> sha
    paths: dict[str, str] = {}
    models: dict[str, str] = {}
    for r in catalog.query("SELECT clip_model, sha256, path FROM images WHERE status = 'indexed'"):
        name = collection_name(r["clip_model"])
        models[name] = r["clip_model"]
        expected[name][point_id(r["sha256"])] = r["sha256"]
        paths[r["sha256"]] = r["path"]
    try:
        stored = stored_points(settings, wait_s)
    finally:
        if not settings.qdrant_url:
            close_clients()  # the embedded store locks its folder: never keep it from a session
    names = set(stored)
    problems: list[str] = []
    for name in sorted(names - set(expected)):
        if stored[name]:
            problems.append(
                f"vector collection {name} holds {len(stored[name])} points of no catalog model"
            )
    for name, want in sorted(expected.items()):
        have = stored.get(name, {})
        problems += _named(
            f"vector of an image not indexed in the catalog ({models[name]})",
            (f"{pid} ({have[pid].get('path')})" for pid in set(have) - set(want)),
        )
        problems += _named(
            f"indexed image without a vector ({models[name]})",
            (f"{want[pid]} ({paths[want[pid]]})" for pid in set(want) - set(have)),
        )
        problems += _named(
            f"vector whose path differs from the catalog's ({models[name]})",
            (
                f"{want[pid]}: {have[pid].get('path')} (catalog: {paths[want[pid]]})"
                for pid in set(want) & set(have)
                if have[pid].get("path") != paths[want[pid]]
            ),
        )
    return problems
