"""Housekeeping bounds what sessions leave behind: catalog parts, batch results, flow runs
and logs; `photoindex gc` runs it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings
from typer.testing import CliRunner

from photoindex.cli import app
from photoindex.prefect_server import ensure_prefect_api, stop_server
from photoindex.settings import Settings, get_settings
from tasks.catalog import Catalog, now_utc, status_row
from tasks.housekeeping import (
    PRUNE_EVERY_S,
    compact,
    delete_expired_results,
    delete_interrupted_writes,
    housekeeping,
    prune_flow_runs,
    prune_runs,
    rotate_logs,
)
from tasks.integrity import check_integrity
from tests.environ import environ
from tests.loopback import free_port


def test_compaction_merges_parts_and_readers_see_the_same_rows(tmp_path: Path) -> None:
    catalog = Catalog(Settings(data_dir=tmp_path))
    for batch in range(10):  # one part per batch, as phases write them
        keys = range(batch * 5, batch * 5 + 10)  # each key written by two batches
        catalog.append("status", [status_row(f"k{k}", "embed", "m", f"/p/{k}.jpg", "indexed",
                                             reason=f"batch {batch}") for k in keys])
    face = {"face_id": "f1", "image_sha256": "s", "image_path": "/p/1.jpg", "bbox": [0.0] * 4,
            "score": 0.9, "landmarks": [0.0] * 10, "embedding": [0.1, 0.2], "model": "m",
            "crop_path": None, "indexed_at": now_utc(), "removed": False}
    for i in range(6):
        catalog.append("faces", [{**face, "indexed_at": now_utc(), "removed": i == 5}])
    sql = "SELECT key, reason FROM status ORDER BY key"
    before = catalog.query(sql)
    assert catalog.query("SELECT count(*) AS n FROM faces")[0]["n"] == 0  # the tombstone wins

    assert compact(catalog, "status", max_parts=4) == (10, 55)
    assert compact(catalog, "faces", max_parts=4) == (6, 1)
    assert len(catalog.parts("status")) == 1 and len(catalog.parts("faces")) == 1
    assert catalog.query(sql) == before
    assert catalog.query("SELECT count(*) AS n FROM faces")[0]["n"] == 0
    assert compact(catalog, "status", max_parts=4) is None  # within bounds: untouched


def test_the_files_of_interrupted_writes_are_deleted_and_nothing_else(tmp_path: Path) -> None:
    """A process killed mid-write leaves temporary files; the next session's housekeeping
    (it holds the library lock) deletes them, so the integrity check is clean again."""
    settings = Settings(data_dir=tmp_path)
    catalog = Catalog(settings)
    catalog.append("status", [status_row("k", "embed", "m", "/p/k.jpg", "indexed", sha256="k")])
    stray = [
        settings.catalog_dir / "status" / ".tmp-abc123.parquet.part",
        settings.crops_dir / "ab" / "face.jpg.tmp",
    ]
    for path in stray:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"PAR1 half")
    kept = settings.crops_dir / "ab" / "face.jpg"
    kept.write_bytes(b"\xff\xd8")
    assert any("interrupted write" in p for p in check_integrity(settings))
    assert delete_interrupted_writes(settings) == 2
    assert not any(p.exists() for p in stray) and kept.exists()
    assert len(catalog.parts("status")) == 1
    assert not any("interrupted write" in p for p in check_integrity(settings))


def test_expired_batch_results_are_deleted_and_fresh_ones_kept(tmp_path: Path) -> None:
    old, fresh = tmp_path / "old-result", tmp_path / "fresh-result"
    old.write_bytes(b"x" * 1000)
    fresh.write_bytes(b"y" * 10)
    eight_days_ago = time.time() - 8 * 86400
    os.utime(old, (eight_days_ago, eight_days_ago))
    assert delete_expired_results(tmp_path, timedelta(days=7)) == (1, 1000)
    assert not old.exists() and fresh.exists()
    assert delete_expired_results(tmp_path / "none", timedelta(days=7)) == (0, 0)


def test_logs_are_rotated_and_old_session_logs_deleted(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, gc_max_log_bytes=1024, gc_keep_logs=2,
                        gc_keep_session_logs=2)
    server_log = settings.prefect_home / "server.log"
    server_log.parent.mkdir(parents=True)
    logs = tmp_path / "logs"
    logs.mkdir()
    for i in range(5):
        path = logs / f"session-{i}.log"
        path.write_text(f"session {i}\n")
        os.utime(path, (time.time() - 100 + i, time.time() - 100 + i))
    for round_ in range(4):
        server_log.write_bytes(f"round {round_}\n".encode() * 200)
        rotated, deleted = rotate_logs(settings)
        assert rotated == [str(server_log)]
        assert deleted == (3 if round_ == 0 else 0)
    assert server_log.stat().st_size == 0
    assert sorted(p.name for p in server_log.parent.iterdir()) == [
        "server.log", "server.log.1", "server.log.2"
    ]
    assert (server_log.parent / "server.log.1").read_text().startswith("round 3")
    assert sorted(p.name for p in logs.iterdir()) == ["session-3.log", "session-4.log"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, dict[Any, str]]]:
    """A Prefect server of its own: pruning must not touch other tests' runs."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("data"), prefect_port=free_port())
    saved = dict(os.environ)
    proc: subprocess.Popen[bytes] | None = None
    try:
        url, proc = ensure_prefect_api(settings, wait_s=240)
        auth = os.environ["PREFECT_API_AUTH_STRING"]
        updates = {PREFECT_API_URL: url, PREFECT_API_AUTH_STRING: auth}
        yield settings, updates
    finally:
        os.environ.clear()
        os.environ.update(saved)
        if proc is not None:
            stop_server(proc)


@task
def batch() -> int:
    return 1


@flow(name="index-photos")
def session() -> int:
    return batch()


@flow(name="someone-elses-flow")
def other() -> int:
    return batch()


def test_old_runs_of_photoindex_flows_are_pruned_within_the_limit(
    server: tuple[Settings, dict[Any, str]],
) -> None:
    _, updates = server
    with temporary_settings(updates=updates):
        ours = [session(return_state=True).state_details.flow_run_id for _ in range(3)]
        assert None not in ours
        ids_of_ours = [run_id for run_id in ours if run_id is not None]
        theirs = other(return_state=True).state_details.flow_run_id
        assert asyncio.run(prune_flow_runs(timedelta(0), limit=2)) == 2
        assert asyncio.run(prune_flow_runs(timedelta(days=1), limit=10)) == 0  # too recent
        assert asyncio.run(prune_flow_runs(timedelta(0), limit=10)) == 1
        with get_client(sync_client=True) as client:
            ids = [r.id for r in client.read_flow_runs()]
            assert ids == [theirs]
            task_runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids_of_ours))
            )
            assert task_runs == []  # they went with their flow runs


def test_a_sessions_housekeeping_looks_for_old_runs_at_most_hourly(
    server: tuple[Settings, dict[Any, str]],
) -> None:
    settings, updates = server
    with temporary_settings(updates=updates):
        assert prune_runs(settings) is not None  # as the warm indexer starts, or `gc`
        summary = housekeeping(settings, prune_every_s=PRUNE_EVERY_S)  # a session's end
        assert not summary.runs_looked_at
        assert "old flow runs: looked for less than an hour ago" in summary.lines()
        assert housekeeping(settings).runs_looked_at  # `photoindex gc`: always


def test_photoindex_gc_runs_it_all(server: tuple[Settings, dict[Any, str]]) -> None:
    settings, updates = server
    catalog = Catalog(settings)
    for i in range(70):  # beyond the default of 64 parts
        catalog.append("status", [status_row(f"k{i}", "embed", "m", "/p", "skipped", reason="x")])
    catalog.write_duckdb_file()
    saved = dict(os.environ)
    env = {"PHOTOINDEX_DATA_DIR": str(settings.data_dir),
           "PHOTOINDEX_PREFECT_PORT": str(settings.prefect_port)}
    try:
        with environ(**env), temporary_settings(updates=updates):
            get_settings.cache_clear()
            result = CliRunner().invoke(app, ["gc"])
    finally:
        get_settings.cache_clear()
        os.environ.clear()
        os.environ.update(saved)
    assert result.exit_code == 0, result.output
    assert "compacted status: 70 parts into 1 (70 rows)" in result.output
    assert "finished flow runs" in result.output
    assert len(catalog.parts("status")) == 1
    assert Catalog(settings).query("SELECT count(*) AS n FROM status")[0]["n"] == 70
