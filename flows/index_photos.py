"""The parent flow: one indexing session runs the three phases in order."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.runtime import flow_run
from prefect.states import Pending

from flows.cluster_faces import cluster_faces
from flows.deploy import submit_via_deployment
from flows.detect_faces import detect_faces
from flows.embed_images import embed_images
from flows.runners import shared_cluster, task_runner
from photoindex.settings import get_settings
from tasks.catalog import Catalog
from tasks.lock import LibraryBusy, busy_message, library_holder, library_lock
from tasks.phase import PhaseSummary
from tasks.vectors import close_clients, optimize_if_worth_it


def session_name(folder: str) -> str:
    """A readable run name: the folder and the time."""
    return f"{Path(folder).name or folder} {datetime.now(UTC):%Y-%m-%d %H:%M}"


@flow(name="index-photos", flow_run_name=lambda: "index " + _run_folder())
def index_photos(folder: str, faces: bool = True) -> list[PhaseSummary]:
    """Index a photo folder: CLIP embeddings, then faces and persons."""
    log = get_run_logger()
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"folder not found: {folder}")
    folder = str(root.resolve())
    settings = get_settings()
    session = str(flow_run.get_id() or "?")
    # One writer per data folder, or a clear no; one Dask cluster (if any) for all phases.
    with library_lock(settings, session, folder), shared_cluster(settings) as run_settings:
        runner = task_runner(run_settings)
        summaries = [embed_images.with_options(task_runner=runner)(folder)]
        close_clients()  # release local Qdrant's lock as soon as the vectors are in
        if faces:
            summaries.append(detect_faces.with_options(task_runner=runner)(folder))
            summaries.append(cluster_faces.with_options(task_runner=runner)())
        Catalog().write_duckdb_file()
        optimize_if_worth_it()  # HNSW after a session that added many points, never during one
    for s in summaries:
        log.info(
            "%s: %d items, %d new, %d reused, %d skipped, %d failed in %.1f s",
            s.phase,
            s.total,
            s.processed,
            s.reused,
            s.skipped,
            s.failed,
            s.seconds,
        )
    return summaries


def _run_folder() -> str:
    params = flow_run.parameters or {}
    return session_name(str(params.get("folder", "?")))


async def create_session(folder: Path, faces: bool = True) -> UUID:
    """Create the parent flow run of a new session, not yet started."""
    params = {"folder": str(folder), "faces": faces}
    async with get_client() as client:
        run = await client.create_flow_run(
            index_photos,
            parameters=params,
            name="index " + session_name(str(folder)),
            state=Pending(),
        )
    return run.id


def start_session_process(session_id: UUID) -> subprocess.Popen[bytes]:
    """Run a created session in its own process, so a crash cannot take the caller down."""
    settings = get_settings()
    log_dir = settings.data_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log = open(log_dir / f"session-{session_id}.log", "ab")  # noqa: SIM115
    return subprocess.Popen(
        [sys.executable, "-m", "photoindex.runner", str(session_id)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=os.environ.copy(),
        start_new_session=True,
    )


def submit_session(folder: Path, faces: bool = True) -> UUID:
    """Start a session and return its id at once: through the `index-photos` deployment
    when one exists and a worker polls its pool, else in a separate local process.

    Raises LibraryBusy when a session is indexing into this data folder now.
    """
    import asyncio

    holder = library_holder(get_settings())
    if holder is not None:
        raise LibraryBusy(busy_message(holder, get_settings()))
    deployed = asyncio.run(submit_via_deployment(folder, faces))
    if deployed is not None:  # a worker of the deployment's pool runs it
        return deployed
    session_id = asyncio.run(create_session(folder, faces))
    start_session_process(session_id)
    return session_id


if __name__ == "__main__":
    index_photos(sys.argv[1])
