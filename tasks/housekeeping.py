"""Housekeeping: what sessions leave behind, kept within the bounds of the settings.

`housekeeping(settings)` compacts catalog tables grown past `gc_max_parts` parts,
deletes persisted batch results older than `gc_keep_results_days`, deletes finished
flow runs (with their task runs) older than `gc_keep_runs_days`, at most
`gc_max_run_deletions` at a time, and rotates logs larger than `gc_max_log_bytes`,
keeping the newest `gc_keep_session_logs` session logs. Run it while no session
indexes into the data folder (`photoindex gc` checks that).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from photoindex.settings import Settings
from tasks.catalog import (
    _SCHEMAS,
    CROP_TEMP_GLOB,
    PARQUET_TEMP_GLOB,
    Catalog,
    fsync_dir,
    write_parquet_atomic,
)

logger = logging.getLogger(__name__)

#: Tables written one part per batch; the others are replaced whole.
APPENDED_TABLES = {
    # table: the view's own "latest row wins" rule, so compaction keeps what readers see
    "status": "PARTITION BY phase, model, key ORDER BY updated_at DESC",
    "faces": "PARTITION BY face_id ORDER BY indexed_at DESC",
}
FINAL_STATES = ["COMPLETED", "FAILED", "CANCELLED", "CRASHED"]
PRUNE_EVERY_S = 3600.0
"""A session's housekeeping looks for old flow runs at most this often per data folder:
they are kept for days, and the look costs the Prefect server a write (a new client's CSRF
token) at the end of every session, where its SQLite refuses a write now and then."""
SESSION_LOG_GLOB = "session-*.log"


@dataclass
class HousekeepingSummary:
    """What one housekeeping did, for a person to read."""

    compacted: dict[str, tuple[int, int]] = field(default_factory=dict)  # table: (parts, rows)
    results_deleted: int = 0
    results_bytes: int = 0
    runs_deleted: int = 0
    runs_looked_at: bool = True  # False: looked for less than PRUNE_EVERY_S ago
    logs_rotated: list[str] = field(default_factory=list)
    logs_deleted: int = 0
    temps_deleted: int = 0
    skipped: list[str] = field(default_factory=list)  # what could not be done, and why

    def lines(self) -> list[str]:
        out = [
            f"compacted {table}: {parts} parts into 1 ({rows} rows)"
            for table, (parts, rows) in self.compacted.items()
        ]
        out.append(
            f"deleted {self.results_deleted} expired batch results "
            f"({self.results_bytes / 1e6:.1f} MB)"
        )
        if self.runs_looked_at:
            out.append(f"deleted {self.runs_deleted} finished flow runs and their task runs")
        else:
            out.append("old flow runs: looked for less than an hour ago")
        out += [f"rotated {name}" for name in self.logs_rotated]
        out.append(f"deleted {self.logs_deleted} old session logs")
        if self.temps_deleted:
            out.append(f"deleted {self.temps_deleted} files of interrupted writes")
        out += [f"skipped: {why}" for why in self.skipped]
        return out


def housekeeping(
    settings: Settings, results_dir: Path | None = None, prune_every_s: float = 0.0
) -> HousekeepingSummary:
    """Compact the catalog, delete expired results and old runs, rotate logs.

    `results_dir` defaults to Prefect's result storage of this process
    (`PREFECT_RESULTS_LOCAL_STORAGE_PATH`, by default `$PREFECT_HOME/storage`). Old runs
    are looked for unless that was done less than `prune_every_s` ago.
    """
    summary = HousekeepingSummary()
    summary.temps_deleted = delete_interrupted_writes(settings)
    catalog = Catalog(settings)
    for table in APPENDED_TABLES:
        done = compact(catalog, table, settings.gc_max_parts)
        if done is not None:
            summary.compacted[table] = done
    if summary.compacted and (settings.data_dir / "catalog.duckdb").exists():
        catalog.write_duckdb_file()  # it lists the parts by name
    if results_dir is None:
        from prefect.settings import PREFECT_RESULTS_LOCAL_STORAGE_PATH

        results_dir = Path(PREFECT_RESULTS_LOCAL_STORAGE_PATH.value())
    summary.results_deleted, summary.results_bytes = delete_expired_results(
        results_dir, timedelta(days=settings.gc_keep_results_days)
    )
    try:
        pruned = prune_runs(settings, prune_every_s)
    except httpx.HTTPError as err:
        summary.skipped.append(f"pruning flow runs: the Prefect API is unreachable ({err})")
    else:
        summary.runs_looked_at = pruned is not None
        summary.runs_deleted = pruned or 0
    rotated, deleted = rotate_logs(settings)
    summary.logs_rotated, summary.logs_deleted = rotated, deleted
    return summary


def delete_interrupted_writes(settings: Settings) -> int:
    """Delete the temporary files of writes a killed process left behind: catalog parts
    and face crops never installed. Only the session holding the library lock writes
    there, and it calls this, so none of them is still being written."""
    stray = [
        *(settings.catalog_dir.rglob(PARQUET_TEMP_GLOB) if settings.catalog_dir.is_dir() else []),
        *(settings.crops_dir.rglob(CROP_TEMP_GLOB) if settings.crops_dir.is_dir() else []),
    ]
    for path in stray:
        path.unlink(missing_ok=True)
        logger.info("deleted %s, left by an interrupted write", path)
    return len(stray)


def compact(catalog: Catalog, table: str, max_parts: int) -> tuple[int, int] | None:
    """Merge a table's parts into one when it has more than `max_parts`: (parts, rows kept).

    The merged part is written before the old ones go, and it keeps only the rows the
    view shows (latest per key), so a reader meanwhile sees the same rows either way.
    """
    parts = catalog.parts(table)
    if len(parts) <= max_parts:
        return None
    schema = _SCHEMAS[table]
    source = "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in parts) + "]"
    cols = ", ".join(f'"{f.name}"' for f in schema)
    con = catalog.connect()
    try:
        merged = con.sql(
            f"SELECT {cols} FROM read_parquet({source}, union_by_name=true) "
            f"QUALIFY row_number() OVER ({APPENDED_TABLES[table]}) = 1"
        ).to_arrow_table()
    finally:
        con.close()
    merged = merged.cast(schema)
    dest = catalog.root / table / f"compact-{uuid.uuid4().hex[:12]}.parquet"
    write_parquet_atomic(merged, dest)
    for part in parts:
        part.unlink()
    fsync_dir(dest.parent)
    logger.info("compacted %s: %d parts into %s (%d rows)", table, len(parts), dest, len(merged))
    return len(parts), merged.num_rows


def delete_expired_results(results_dir: Path, keep: timedelta) -> tuple[int, int]:
    """Delete persisted results not written for `keep`: (files, bytes). Their cache entries
    have expired (`cache_expiration`), so no run reads them again."""
    if not results_dir.is_dir():
        return 0, 0
    cutoff = time.time() - keep.total_seconds()
    files = n_bytes = 0
    for path in results_dir.rglob("*"):
        if path.is_file() and path.stat().st_mtime < cutoff:
            n_bytes += path.stat().st_size
            path.unlink()
            files += 1
    return files, n_bytes


def prune_runs(settings: Settings, every_s: float = 0.0) -> int | None:
    """Delete the data folder's old flow runs (`prune_flow_runs` within the settings'
    bounds) unless that was done less than `every_s` ago; how many, None when not due."""
    marker = settings.data_dir / "cache" / "runs-pruned"  # its time is the last look
    try:
        if time.time() - marker.stat().st_mtime < every_s:
            return None
    except FileNotFoundError:
        pass
    keep = timedelta(days=settings.gc_keep_runs_days)
    deleted = asyncio.run(prune_flow_runs(keep, settings.gc_max_run_deletions))
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    return deleted


async def prune_flow_runs(keep: timedelta, limit: int) -> int:
    """Delete at most `limit` runs of photoindex's flows that ended longer than `keep` ago;
    their task runs go with them. Other flows on the same server are left alone."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterEndTime,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    from photoindex.phases import PHASES, SESSION_FLOW

    ours = FlowFilter(name=FlowFilterName(any_=[SESSION_FLOW, *(p.flow for p in PHASES)]))
    old = FlowRunFilter(
        end_time=FlowRunFilterEndTime.model_validate({"before_": datetime.now(UTC) - keep}),
        state=FlowRunFilterState(
            type=FlowRunFilterStateType(any_=[StateType(s) for s in FINAL_STATES])
        ),
    )
    deleted = 0
    async with get_client() as client:
        while deleted < limit:
            runs = await client.read_flow_runs(
                flow_filter=ours, flow_run_filter=old, limit=min(200, limit - deleted)
            )
            if not runs:
                break
            for run in runs:
                await client.delete_flow_run(run.id)
                deleted += 1
    return deleted


def _rotate(path: Path, keep: int) -> None:
    """Copy `path` to `path.1` (shifting older copies up to `keep`) and truncate it.

    Copy-then-truncate, because the writing process keeps the file open in append mode.
    """
    for i in range(keep, 0, -1):
        older = path.with_name(f"{path.name}.{i}")
        if not older.exists():
            continue
        if i == keep:
            older.unlink()
        else:
            older.replace(path.with_name(f"{path.name}.{i + 1}"))
    if keep > 0:
        shutil.copyfile(path, path.with_name(f"{path.name}.1"))
    with open(path, "r+b") as f:
        f.truncate(0)


def rotate_logs(settings: Settings) -> tuple[list[str], int]:
    """Rotate `server.log` and session logs over the size limit; delete all but the newest
    session logs. Returns (rotated names, deleted count)."""
    rotated = []
    logs_dir = settings.data_dir / "logs"
    sessions = sorted(
        logs_dir.glob(SESSION_LOG_GLOB) if logs_dir.is_dir() else [],
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    deleted = 0
    for old in sessions[settings.gc_keep_session_logs :]:
        old.unlink()
        for copy in old.parent.glob(old.name + ".*"):
            copy.unlink()
        deleted += 1
    candidates = [settings.prefect_server_log, *sessions[: settings.gc_keep_session_logs]]
    for path in candidates:
        if path.is_file() and path.stat().st_size > settings.gc_max_log_bytes:
            _rotate(path, settings.gc_keep_logs)
            rotated.append(str(path))
    return rotated, deleted
