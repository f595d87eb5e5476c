"""The catalog: Parquet parts written durably, read through DuckDB views.

Every file is written to a temporary name, flushed to disk, renamed into place and its
folder flushed, so a power cut leaves the old file or the new one, never an empty one.
Readers skip a part that is unreadable anyway (an older crash, a copy gone wrong) and
name it in the log; `photoindex check` lists it and `--repair` moves it aside. The
`persons` and `person_faces` tables are one generation, switched by one rename.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from photoindex.settings import Settings, get_settings

logger = logging.getLogger(__name__)

# Rows of `status`: what each phase did with each item (indexed, skipped, failed).
STATUS_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("phase", pa.string()),
        ("model", pa.string()),
        ("sha256", pa.string()),
        ("path", pa.string()),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("n_faces", pa.int32()),
        ("updated_at", pa.timestamp("us", tz="UTC")),
    ]
)

FACE_SCHEMA = pa.schema(
    [
        ("face_id", pa.string()),
        ("image_sha256", pa.string()),
        ("image_path", pa.string()),
        ("bbox", pa.list_(pa.float32(), 4)),
        ("score", pa.float32()),
        ("landmarks", pa.list_(pa.float32(), 10)),
        ("embedding", pa.list_(pa.float32())),
        ("model", pa.string()),
        ("crop_path", pa.string()),
        ("indexed_at", pa.timestamp("us", tz="UTC")),
        ("removed", pa.bool_()),  # a tombstone: the photo left the library
    ]
)

# One manifest per library folder: the files its latest scan found, with their hashes.
FILE_SCHEMA = pa.schema(
    [
        ("root", pa.string()),
        ("path", pa.string()),  # for people: undecodable bytes escaped, see display_path
        ("raw_path", pa.binary()),  # for programs: the exact bytes of the name
        ("sha256", pa.string()),
        ("size", pa.int64()),
        ("mtime", pa.float64()),
        ("scanned_at", pa.timestamp("us", tz="UTC")),
    ]
)

PERSON_FACE_SCHEMA = pa.schema(
    [
        ("face_id", pa.string()),
        ("person_id", pa.string()),
        ("probability", pa.float32()),
    ]
)

PERSON_SCHEMA = pa.schema(
    [
        ("person_id", pa.string()),
        ("face_count", pa.int32()),
        ("representative_face_id", pa.string()),
        ("model", pa.string()),
        ("fingerprint", pa.string()),
        ("updated_at", pa.timestamp("us", tz="UTC")),
    ]
)

# Latest row wins: a part written twice (a crash between two writes) never shows twice.
_VIEWS = {
    "status": (
        "SELECT * FROM read_parquet({glob}, union_by_name=true) "
        "QUALIFY row_number() OVER (PARTITION BY phase, model, key "
        "ORDER BY updated_at DESC) = 1"
    ),
    "faces": (
        "SELECT * EXCLUDE (removed) FROM (SELECT * FROM read_parquet({glob}, union_by_name=true) "
        "QUALIFY row_number() OVER (PARTITION BY face_id ORDER BY indexed_at DESC) = 1) "
        "WHERE removed IS NOT TRUE"
    ),
    "files": "SELECT * FROM read_parquet({glob})",
    "persons": "SELECT * FROM read_parquet({glob})",
    "person_faces": "SELECT * FROM read_parquet({glob})",
}
_SCHEMAS = {
    "status": STATUS_SCHEMA,
    "faces": FACE_SCHEMA,
    "persons": PERSON_SCHEMA,
    "person_faces": PERSON_FACE_SCHEMA,
    "files": FILE_SCHEMA,
}
_IMAGES_VIEW = (
    "SELECT e.sha256, e.path, e.status, e.reason, e.width, e.height, e.model AS clip_model, "
    "f.n_faces, f.status AS faces_status, e.updated_at AS indexed_at "
    "FROM status e LEFT JOIN (SELECT * FROM status WHERE phase = 'faces') f "
    "ON f.key = e.key WHERE e.phase = 'embed' AND e.status <> 'removed'"
)


def display_path(path: str) -> str:
    """A path as valid UTF-8 text: undecodable name bytes become `\\xNN` escapes."""
    return os.fsencode(path).decode("utf-8", errors="backslashreplace")


def now_utc() -> datetime:
    return datetime.now(UTC)


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename into it) to disk."""
    if os.name == "nt":  # Windows cannot open a folder; NTFS journals renames itself
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def install_durably(tmp: Path, dest: Path) -> None:
    """Flush a written temporary file, rename it over `dest`, flush the folder."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, dest)
    fsync_dir(dest.parent)


#: The name pattern of a Parquet part being written (see `write_parquet_atomic`).
PARQUET_TEMP_GLOB = ".tmp-*.parquet.part"
#: The name pattern of a face crop being written (`tasks.faces.save_jpeg`).
CROP_TEMP_GLOB = "*.jpg.tmp"


def write_parquet_atomic(table: pa.Table, dest: Path) -> None:
    """Write a Parquet file so that readers, and a power cut, see all of it or none of it."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-", suffix=".parquet.part")
    os.close(fd)
    tmp = Path(name)
    try:
        pq.write_table(table, tmp)
        install_durably(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(text: str, dest: Path) -> None:
    """Write a small text file durably: all of it or the old one."""
    tmp = dest.with_name(f".tmp-{dest.name}-{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_text(text)
        install_durably(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


_readable: dict[str, tuple[int, int, bool]] = {}
"""Parts already judged, by path: (size, mtime_ns, readable). A part is never rewritten in
place, so a changed size or mtime means another file."""

_Signature = tuple[str | None, tuple[tuple[int, int], ...]]
_views: dict[tuple[int, str], tuple[dict[str, _Signature], duckdb.DuckDBPyConnection]] = {}
"""By process and catalog root: the parts each view was made over, and their database."""
_views_lock = threading.Lock()


def _list_literal(files: Sequence[Path]) -> str | None:
    """A DuckDB list literal of files, or None if there are none."""
    if not files:
        return None
    quoted = ("'" + str(f.resolve()).replace("'", "''") + "'" for f in files)
    return "[" + ", ".join(quoted) + "]"


def _empty_select(table: str) -> str:
    """A query of no rows with a table's columns and types."""
    cols = ", ".join(f"CAST(NULL AS {_duck_type(f.type)}) AS {f.name}" for f in _SCHEMAS[table])
    return f"SELECT {cols} WHERE false"


def _stats(parts: Sequence[Path]) -> tuple[tuple[int, int], ...]:
    """(size, mtime_ns) of each part, as `readable_part` judged them."""
    return tuple(_readable[str(p)][:2] if str(p) in _readable else (-1, -1) for p in parts)


def readable_part(path: Path) -> bool:
    """Whether a Parquet part's footer reads; an unreadable one is logged once and skipped."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return False  # moved aside or compacted away since it was listed
    known = _readable.get(str(path))
    if known is not None and known[:2] == (st.st_size, st.st_mtime_ns):
        return known[2]
    try:
        pq.read_metadata(path)
        ok = True
    except (OSError, pa.ArrowException) as err:
        logger.warning(
            "skipping unreadable catalog part %s (%s); `photoindex check --repair` moves it aside",
            path,
            err,
        )
        ok = False
    _readable[str(path)] = (st.st_size, st.st_mtime_ns, ok)
    return ok


PEOPLE_TABLES = ("persons", "person_faces")
PEOPLE_DIR = "people"
PEOPLE_GRACE_S = 60.0
CURRENT = "CURRENT"
"""`people/CURRENT` names the generation folder that holds both people tables."""


class Catalog:
    """Parquet tables under `catalog_dir`, with DuckDB views for queries."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.root = self.settings.catalog_dir
        self.root.mkdir(parents=True, exist_ok=True)

    # writing -----------------------------------------------------------------
    def append(self, table: str, rows: Sequence[dict[str, Any]], name: str = "") -> Path | None:
        """Add rows to a table as one new Parquet part; returns the part written."""
        if not rows:
            return None
        part = self.root / table / f"{name or 'part'}-{uuid.uuid4().hex[:12]}.parquet"
        write_parquet_atomic(pa.Table.from_pylist(list(rows), schema=_SCHEMAS[table]), part)
        return part

    def replace(self, table: str, rows: Sequence[dict[str, Any]]) -> None:
        """Replace a whole table with these rows, atomically."""
        if table in PEOPLE_TABLES:
            other = next(t for t in PEOPLE_TABLES if t != table)
            self.replace_people(**{table: rows, other: self.query(f"SELECT * FROM {other}")})
            return
        dest = self.root / table / "current.parquet"
        write_parquet_atomic(pa.Table.from_pylist(list(rows), schema=_SCHEMAS[table]), dest)

    def replace_people(
        self, persons: Sequence[dict[str, Any]], person_faces: Sequence[dict[str, Any]]
    ) -> None:
        """Replace persons and their faces together: a reader sees both old or both new.

        Both go into a new generation folder, then one rename of `people/CURRENT` switches
        to it. Older generations stay for a minute, for readers that opened one just before.
        """
        people = self.root / PEOPLE_DIR
        generation = f"g{now_utc():%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:6]}"
        for table, rows in (("persons", persons), ("person_faces", person_faces)):
            part = pa.Table.from_pylist(list(rows), schema=_SCHEMAS[table])
            write_parquet_atomic(part, people / generation / f"{table}.parquet")
        previous = self._people_generation()
        write_text_atomic(generation + "\n", people / CURRENT)
        stale = time.time() - PEOPLE_GRACE_S
        for old in people.iterdir():
            if old.is_dir() and old.name not in (generation, previous):
                if old.stat().st_mtime < stale:
                    shutil.rmtree(old, ignore_errors=True)
        for legacy in PEOPLE_TABLES:  # data folders from before generations
            shutil.rmtree(self.root / legacy, ignore_errors=True)

    # reading -----------------------------------------------------------------
    def _people_generation(self) -> str | None:
        try:
            name = (self.root / PEOPLE_DIR / CURRENT).read_text().strip()
        except FileNotFoundError:
            return None
        return name or None

    def parts(self, table: str, generation: str | None = None) -> list[Path]:
        """The readable Parquet files of a table, as of now; unreadable ones are skipped.

        Pass the people `generation` read once to get both people tables of the same one.
        """
        if table in PEOPLE_TABLES and generation is None:
            generation = self._people_generation()
        if table in PEOPLE_TABLES and generation is not None:
            files = [self.root / PEOPLE_DIR / generation / f"{table}.parquet"]
        else:
            folder = self.root / table
            files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
        return [f for f in files if readable_part(f)]

    def _source(self, table: str, generation: str | None) -> str | None:
        """A DuckDB list literal of a table's readable parts, or None if it has none."""
        return _list_literal(self.parts(table, generation))

    def connect(self) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection with the catalog's views; no file lock taken. Close it.

        Creating a view reads every part's schema (`union_by_name`), which cost a
        20-photo session seconds when each query did it. So the views live in one
        in-memory database per catalog and process, and a table's view is made again only
        when its parts changed (parts are never rewritten in place: a new set means new
        names); each caller gets its own cursor on it. A new database for each change cost
        14 ms more, and every view again, after each batch written.
        """
        generation = self._people_generation()
        parts = {table: self.parts(table, generation) for table in _VIEWS}
        key = (os.getpid(), str(self.root))
        with _views_lock:
            cached = _views.get(key)
            if cached is None:
                cached = _views[key] = ({}, duckdb.connect())
            made, con = cached
            for table, files in parts.items():
                source = _list_literal(files)
                # A folder's file manifest is replaced under its own name: stats tell versions.
                signature = (source, _stats(files))
                if made.get(table) != signature:
                    self._create_view(con, table, source)
                    made[table] = signature
            if "images" not in made:
                con.execute(f"CREATE OR REPLACE VIEW images AS {_IMAGES_VIEW}")
                made["images"] = (None, ())
            return con.cursor()

    @staticmethod
    def _create_view(con: duckdb.DuckDBPyConnection, table: str, source: str | None) -> None:
        if source is None:  # a plain view: cursors do not see a connection's registrations
            con.execute(f"CREATE OR REPLACE VIEW {table} AS {_empty_select(table)}")
        else:
            con.execute(f"CREATE OR REPLACE VIEW {table} AS " + _VIEWS[table].format(glob=source))

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Run a query over the catalog's views and return rows as dicts."""
        con = self.connect()
        try:
            cur = con.execute(sql, list(params))
            names = [d[0] for d in cur.description or []]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
        finally:
            con.close()

    def done_rows(self, phase: str, model: str) -> dict[str, dict[str, Any]]:
        """Status rows of the keys a phase finished for a model: indexed or skipped for good."""
        rows = self.query(
            "SELECT * FROM status WHERE phase = ? AND model = ? "
            "AND status NOT IN ('failed', 'removed')",
            (phase, model),
        )
        return {r["key"]: r for r in rows}

    # the library's files -----------------------------------------------------
    def _manifest(self, root: str) -> Path:
        digest = hashlib.sha256(os.fsencode(root)).hexdigest()[:16]
        return self.root / "files" / f"{digest}.parquet"

    def known_files(self) -> dict[str, tuple[int, float, str]]:
        """Hashes from earlier scans, by path: (size, mtime, sha256). Unchanged files reuse them."""
        rows = self.query("SELECT raw_path, size, mtime, sha256 FROM files")
        return {os.fsdecode(r["raw_path"]): (r["size"], r["mtime"], r["sha256"]) for r in rows}

    def write_manifest(self, root: str, files: Sequence[tuple[str, str, int, float]]) -> None:
        """Replace a folder's manifest with what its scan found: (path, sha256, size, mtime)."""
        scanned = now_utc()
        rows = [
            {
                "root": display_path(root),
                "path": display_path(p),
                "raw_path": os.fsencode(p),
                "sha256": h,
                "size": n,
                "mtime": m,
                "scanned_at": scanned,
            }
            for p, h, n, m in files
        ]
        write_parquet_atomic(pa.Table.from_pylist(rows, schema=FILE_SCHEMA), self._manifest(root))

    def present_shas(self) -> set[str]:
        """The content of every photo in some library folder, as of each folder's last scan."""
        return {r["sha256"] for r in self.query("SELECT DISTINCT sha256 FROM files")}

    def faces_for_model(self, model: str) -> pa.Table:
        """All face rows of one face model, as Arrow (ids, embeddings)."""
        con = self.connect()
        try:
            return con.sql(
                "SELECT face_id, embedding FROM faces WHERE model = $model ORDER BY face_id",
                params={"model": model},
            ).to_arrow_table()
        finally:
            con.close()

    def persons(self, limit: int = 1000, samples: int = 3) -> list[dict[str, Any]]:
        """Persons, largest first, each with a few sample crop paths."""
        return self.query(
            "SELECT p.person_id, p.face_count, p.representative_face_id, "
            "list(f.crop_path ORDER BY pf.probability DESC, f.face_id)[1:?] AS sample_crops "
            "FROM persons p JOIN person_faces pf USING (person_id) "
            "JOIN faces f USING (face_id) "
            "GROUP BY ALL ORDER BY p.face_count DESC, p.person_id LIMIT ?",
            (samples, limit),
        )

    def face_crop_path(self, face_id: str) -> Path | None:
        """The crop file of a face, only if it lies inside the crops folder."""
        rows = self.query("SELECT crop_path FROM faces WHERE face_id = ?", (face_id,))
        if not rows or rows[0]["crop_path"] is None:
            return None
        path = Path(rows[0]["crop_path"]).resolve()
        crops = self.settings.crops_dir.resolve()
        if not path.is_relative_to(crops) or not path.is_file():
            return None
        return path

    def write_duckdb_file(self) -> Path:
        """(Re)write `catalog.duckdb` with views over the Parquet files, for plain `duckdb`.

        It is built under a temporary name, checkpointed, reopened to check that every
        view is there, and only then renamed over the old one: a failure (a full disk)
        raises and leaves the old file, with no temporary file or WAL behind.
        """
        dest = self.settings.data_dir / "catalog.duckdb"
        tmp = dest.with_name(f".tmp-{dest.name}")
        leftovers = (tmp, tmp.with_name(tmp.name + ".wal"))
        for path in leftovers:
            path.unlink(missing_ok=True)
        views = [*_VIEWS, "images"]
        try:
            con = duckdb.connect(str(tmp))
            try:
                generation = self._people_generation()
                for table in _VIEWS:
                    source = self._source(table, generation)
                    if source is None:
                        con.execute(f"CREATE VIEW {table} AS {_empty_select(table)}")
                    else:
                        con.execute(f"CREATE VIEW {table} AS " + _VIEWS[table].format(glob=source))
                con.execute(f"CREATE VIEW images AS {_IMAGES_VIEW}")
                con.execute("CHECKPOINT")  # into the file now, where a full disk raises
            finally:
                con.close()
            check = duckdb.connect(str(tmp), read_only=True)
            try:
                rows = check.execute("SELECT view_name FROM duckdb_views()").fetchall()
                found = {str(r[0]) for r in rows}
            finally:
                check.close()
            if missing := set(views) - found:
                raise OSError(f"{tmp} was written without the views {sorted(missing)}")
            dest.with_name(dest.name + ".wal").unlink(missing_ok=True)  # the old file's
            install_durably(tmp, dest)
        finally:
            for path in leftovers:
                path.unlink(missing_ok=True)
        return dest


def _duck_type(t: pa.DataType) -> str:
    if pa.types.is_string(t):
        return "VARCHAR"
    if pa.types.is_integer(t):
        return "INTEGER"
    if pa.types.is_floating(t):
        return "FLOAT"
    if pa.types.is_timestamp(t):
        return "TIMESTAMPTZ"
    if pa.types.is_boolean(t):
        return "BOOLEAN"
    if pa.types.is_binary(t):
        return "BLOB"
    return "FLOAT[]"


def status_row(
    key: str,
    phase: str,
    model: str,
    path: str,
    status: str,
    *,
    sha256: str | None = None,
    reason: str | None = None,
    width: int | None = None,
    height: int | None = None,
    n_faces: int | None = None,
) -> dict[str, Any]:
    """One row of the status table."""
    return {
        "key": key,
        "phase": phase,
        "model": model,
        "sha256": sha256,
        "path": display_path(path),
        "status": status,
        "reason": reason,
        "width": width,
        "height": height,
        "n_faces": n_faces,
        "updated_at": now_utc(),
    }


def chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
