"""Helpers of the resilience tests: data folders, sessions in their own process, snapshots."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

from photoindex.settings import Settings, get_settings
from tests.environ import environ

T = TypeVar("T")


@contextmanager
def use_data_dir(data: Path, **env: str) -> Iterator[Settings]:
    """Point this process's settings at another data folder (and more settings) for a block."""
    from tasks.vectors import close_clients

    seed_face_models(data)
    close_clients()
    with environ(PHOTOINDEX_DATA_DIR=str(data), **env):
        get_settings.cache_clear()
        try:
            yield get_settings()
        finally:
            close_clients()  # local Qdrant locks its folder; let other processes in
            get_settings.cache_clear()
    get_settings.cache_clear()


def seed_face_models(data: Path) -> None:
    """Give a new data folder the fp32 face models, prepared once per test session."""
    from tasks.models.onnx_fix import prepare_face_models

    if (data / "models").is_dir():
        return
    prepared = prepare_face_models(Path(os.environ["PHOTOINDEX_DATA_DIR"]) / "models")
    (data / "models").mkdir(parents=True, exist_ok=True)
    for model in prepared:
        if model.parent.resolve() == (data / "models").resolve():
            return
        shutil.copy2(model, data / "models" / model.name)


def index_in_process(folder: Path, faces: bool = True) -> list[Any]:
    """Run the real `index_photos` flow here and insist that it completes; its summaries."""
    from flows.index_photos import index_photos

    state = index_photos(str(folder), faces, return_state=True)
    assert state.is_completed(), state.message
    summaries: list[Any] = state.result(_sync=True)  # type: ignore[call-overload]
    return summaries


def wait_until(
    probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.1
) -> T:
    """Poll `probe` until it returns something truthy; fail saying what was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@dataclass
class ChildSession:
    """A session started the product's way: created in Prefect, run by `photoindex.runner`."""

    session_id: UUID
    proc: subprocess.Popen[bytes]
    settings: Settings

    @property
    def log(self) -> str:
        path = self.settings.data_dir / "logs" / f"session-{self.session_id}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def signal(self, sig: signal.Signals) -> None:
        """Send a signal to the session's whole process group (it runs in its own)."""
        os.killpg(self.proc.pid, sig)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired as err:
            self.signal(signal.SIGKILL)
            self.proc.wait(10)
            raise AssertionError(
                f"session did not end in {timeout:.0f} s; log:\n{self.log}"
            ) from err

    def stop(self) -> None:
        """Make sure the process is gone (test teardown)."""
        if self.proc.poll() is None:
            self.signal(signal.SIGKILL)
            self.proc.wait(10)


def child_env(data: Path, api_url: str, **env: str) -> dict[str, str]:
    """What a session process needs besides the inherited environment."""
    return {"PREFECT_API_URL": api_url, "PHOTOINDEX_DATA_DIR": str(data), **env}


def start_child_session(folder: Path, data: Path, api_url: str, **env: str) -> ChildSession:
    """`create_session` + `start_session_process`, with the child's settings in its environment."""
    from photoindex.launch import create_session, start_session_process

    seed_face_models(data)
    session_id = asyncio.run(create_session(folder))
    with environ(**child_env(data, api_url, **env)):
        get_settings.cache_clear()
        try:
            settings = get_settings()
            proc = start_session_process(session_id)
        finally:
            get_settings.cache_clear()
    return ChildSession(session_id, proc, settings)


def count_rows(settings: Settings, sql: str, params: tuple[Any, ...] = ()) -> int:
    """A single count from the catalog of a data folder."""
    from tasks.catalog import Catalog

    return int(Catalog(settings).query(sql, params)[0]["n"])


def flow_run_state(session_id: UUID) -> tuple[str, str | None]:
    """A flow run's state type and message, as Prefect has it."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(session_id)
    assert run.state is not None
    return run.state.type.value, run.state.message


def child_run_states(session_id: UUID) -> dict[str, str]:
    """The state of each phase run (by flow name) under a session."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    flt = FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[session_id]))
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=flt)
        return {
            client.read_flow(r.flow_id).name: (r.state.type.value if r.state else "?") for r in runs
        }


def overall_status(reader: Any, session_id: UUID) -> str:
    """What the API's reader says about a session now."""

    async def read() -> str:
        async with reader.connected():
            status: str = (await reader.unified(session_id)).overall_status
            return status

    return asyncio.run(read())


@dataclass(frozen=True)
class Snapshot:
    """What a data folder holds after indexing a folder: the numbers a user would see."""

    indexed: frozenset[str]  # content hashes indexed by the embed phase
    skipped: frozenset[str]  # paths of files recorded as skipped
    failed: int
    faces: frozenset[str]  # face ids in the faces view
    raw_face_rows: int  # face rows in the Parquet parts, before the view dedupes them
    persons: frozenset[frozenset[str]]  # each person as its set of face ids
    crops: int  # crop files on disk
    points: frozenset[str]  # Qdrant point ids

    def counts(self) -> dict[str, int]:
        return {
            "indexed": len(self.indexed),
            "skipped": len(self.skipped),
            "failed": self.failed,
            "faces": len(self.faces),
            "persons": len(self.persons),
            "crops": self.crops,
            "points": len(self.points),
        }


def snapshot(settings: Settings) -> Snapshot:
    """Read a data folder's catalog, crops and vector store (closing the store after)."""
    from tasks.catalog import Catalog
    from tasks.models.registry import clip_embedder
    from tasks.vectors import VectorStore, close_clients

    catalog = Catalog(settings)
    q = catalog.query
    images = "SELECT sha256, path FROM images"
    members: dict[str, set[str]] = {}
    for r in q("SELECT person_id, face_id FROM person_faces"):
        members.setdefault(r["person_id"], set()).add(r["face_id"])
    parts = settings.catalog_dir / "faces"
    raw = (
        q(
            "SELECT count(*) AS n FROM read_parquet(?, union_by_name=true) "
            "WHERE removed IS NOT TRUE",
            (str(parts / "*.parquet"),),
        )[0]["n"]
        if any(parts.glob("*.parquet"))
        else 0
    )
    try:
        points = VectorStore(clip_embedder(settings).model_id, settings).ids()
    finally:
        close_clients()
    return Snapshot(
        indexed=frozenset(r["sha256"] for r in q(f"{images} WHERE status = 'indexed'")),
        skipped=frozenset(r["path"] for r in q(f"{images} WHERE status = 'skipped'")),
        failed=len(q("SELECT 1 FROM status WHERE status='failed'")),
        faces=frozenset(r["face_id"] for r in q("SELECT face_id FROM faces")),
        raw_face_rows=raw,
        persons=frozenset(frozenset(m) for m in members.values()),
        crops=len(list(settings.crops_dir.rglob("*.jpg"))),
        points=frozenset(points),
    )


def assert_healthy(settings: Settings) -> None:
    """`check_integrity` finds nothing wrong with the data folder."""
    from tasks.integrity import check_integrity

    problems = check_integrity(settings)
    assert problems == [], "integrity problems:\n" + "\n".join(problems)


def assert_same_as_clean(after: Snapshot, clean: Snapshot) -> None:
    """A resumed library equals a clean run of the same folder: counts and identities."""
    from tasks.vectors import point_id

    assert after.counts() == clean.counts()
    assert after.indexed == clean.indexed
    assert after.points == {point_id(sha) for sha in after.indexed}
    assert after.faces == clean.faces
    assert after.persons == clean.persons
    assert after.skipped == clean.skipped
