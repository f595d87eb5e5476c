"""The parent flow: one indexing session runs the three phases in order."""

from __future__ import annotations

import sys
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.cluster_faces import cluster_faces
from flows.detect_faces import detect_faces
from flows.embed_images import embed_images
from flows.runners import shared_cluster, task_runner, without_flow_heartbeats
from photoindex.launch import session_name, session_started
from photoindex.phases import SESSION_FLOW
from photoindex.settings import Settings, get_settings
from tasks.catalog import Catalog
from tasks.control import in_session
from tasks.lock import library_lock
from tasks.phase import PhaseSummary


@flow(name=SESSION_FLOW, flow_run_name=lambda: "index " + _run_folder())
def index_photos(folder: str, faces: bool = True) -> list[PhaseSummary]:
    """Index a photo folder: CLIP embeddings, then faces and persons."""
    log = get_run_logger()
    folder = session_folder(folder)
    settings = get_settings()
    session = str(flow_run.get_id() or "?")
    # The vector store's libraries (qdrant_client: 1.4 s of imports) load after start.
    from tasks.vectors import close_clients, optimize_if_worth_it
    # One writer per data folder, or a clear no; one Dask cluster (if any) for all phases.
    # The subflows beat no heartbeat, however the session was started (see the function),
    # and know their session without asking Prefect.
    with (
        library_lock(settings, session, folder),
        shared_cluster(settings) as run_settings,
        without_flow_heartbeats(),
        in_session(flow_run.get_id()),
    ):
        session_started(settings, session)
        runner = task_runner(run_settings)
        # With faces, the embed phase decodes each photo once for both photo phases.
        summaries = [embed_images.with_options(task_runner=runner)(folder, faces=faces)]
        close_clients()  # release local Qdrant's lock as soon as the vectors are in
        if faces:
            summaries.append(detect_faces.with_options(task_runner=runner)(folder))
            summaries.append(cluster_faces.with_options(task_runner=runner)())
        Catalog().write_duckdb_file()
        optimize_if_worth_it()  # HNSW after a session that added many points, never during one
        tidy(settings)
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


def session_folder(folder: str) -> str:
    """The folder a session indexes, as its phases name it: absolute and resolved."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"folder not found: {folder}")
    return str(root.resolve())


def tidy(settings: Settings) -> None:
    """Housekeeping after the work, bounded by the PHOTOINDEX_GC_* settings: compact the
    catalog's parts, delete expired batch results and old runs, rotate logs. A failure
    here is logged; it never costs the session its result."""
    from tasks.housekeeping import PRUNE_EVERY_S, housekeeping

    log = get_run_logger()
    try:
        summary = housekeeping(settings, prune_every_s=PRUNE_EVERY_S)
    except OSError as err:
        log.warning("housekeeping skipped: %s", err)
        return
    for line in summary.lines():
        log.info("housekeeping: %s", line)


def _run_folder() -> str:
    params = flow_run.parameters or {}
    return session_name(str(params.get("folder", "?")))


if __name__ == "__main__":
    index_photos(sys.argv[1])
