"""The catalog: Parquet parts written atomically, read through DuckDB views."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
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


def write_parquet_atomic(table: pa.Table, dest: Path) -> None:
    """Write a Parquet file so that readers see all of it or none of it."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-", suffix=".parquet.part")
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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
        dest = self.root / table / "current.parquet"
        write_parquet_atomic(pa.Table.from_pylist(list(rows), schema=_SCHEMAS[table]), dest)

    # reading -----------------------------------------------------------------
    def _glob(self, table: str) -> str | None:
        folder = self.root / table
        if not folder.is_dir() or not any(folder.glob("*.parquet")):
            return None
        return str(folder / "*.parquet")

    def connect(self) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB connection with the catalog's views; no file lock taken."""
        con = duckdb.connect()
        self._create_views(con)
        return con

    def _create_views(self, con: duckdb.DuckDBPyConnection) -> None:
        for table, sql in _VIEWS.items():
            glob = self._glob(table)
            if glob is None:
                empty = pa.Table.from_pylist([], schema=_SCHEMAS[table])
                con.register(f"_empty_{table}", empty)
                con.execute(f"CREATE OR REPLACE VIEW {table} AS SELECT * FROM _empty_{table}")
            else:
                literal = "'" + glob.replace("'", "''") + "'"
                con.execute(f"CREATE OR REPLACE VIEW {table} AS " + sql.format(glob=literal))
        con.execute(f"CREATE OR REPLACE VIEW images AS {_IMAGES_VIEW}")

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
        """(Re)write `catalog.duckdb` with views over the Parquet files, for plain `duckdb`."""
        dest = self.settings.data_dir / "catalog.duckdb"
        tmp = dest.with_suffix(".duckdb.tmp")
        tmp.unlink(missing_ok=True)
        con = duckdb.connect(str(tmp))
        try:
            for table in _VIEWS:
                glob = self._glob(table)
                if glob is None:
                    cols = ", ".join(
                        f"CAST(NULL AS {_duck_type(f.type)}) AS {f.name}" for f in _SCHEMAS[table]
                    )
                    con.execute(f"CREATE VIEW {table} AS SELECT {cols} WHERE false")
                else:
                    literal = "'" + str(Path(glob).resolve()).replace("'", "''") + "'"
                    con.execute(f"CREATE VIEW {table} AS " + _VIEWS[table].format(glob=literal))
            con.execute(f"CREATE VIEW images AS {_IMAGES_VIEW}")
        finally:
            con.close()
        os.replace(tmp, dest)
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
