"""Task runners: threads by default; with Dask, a real phase runs its batches on workers."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from distributed import Client
from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from flows.runners import shared_cluster, task_runner
from photoindex.settings import Settings, get_settings
from tasks.embed import EmbedPhase
from tasks.phase import PhaseSummary, run_phase
from tasks.vectors import close_clients
from tests.photos import make_photo_folder


def test_threads_are_the_default(data_dir: Path) -> None:
    assert isinstance(task_runner(Settings()), ThreadPoolTaskRunner)


def _worker_state() -> dict[str, bool]:
    # Runs on each Dask worker.
    from photoindex.settings import get_settings
    from tasks.embed import clip_embedder

    return {
        "project imported": "tasks.embed" in sys.modules,
        "clip loaded": clip_embedder(get_settings()).loaded,
    }


@pytest.mark.usefixtures("prefect_harness")
def test_dask_runs_a_phases_batches_on_worker_processes(
    data_dir: Path, tmp_path: Path
) -> None:
    settings = get_settings().model_copy(
        update={
            "data_dir": tmp_path / "data",
            "task_runner": "dask",
            "dask_workers": 2,
            "clip_batch_size": 4,
        }
    )
    photos = make_photo_folder(tmp_path / "photos", n_derived=0)
    with shared_cluster(settings) as on_cluster:
        assert on_cluster.dask_address is not None

        @flow(task_runner=task_runner(on_cluster))
        def embed_on_dask() -> PhaseSummary:
            return run_phase(EmbedPhase(photos.root, on_cluster))

        try:
            summary = embed_on_dask()
        finally:
            close_clients()  # the flow wrote vectors from this process: release local Qdrant
        # distributed leaves Client's constructor untyped.
        with Client(on_cluster.dask_address) as client:  # type: ignore[no-untyped-call]
            workers = client.run(_worker_state)
    assert (summary.processed, summary.failed) == (len(photos.photos), 0)
    assert len(workers) == 2
    # Every worker imported the project; the batches' CLIP ran there, not in this process.
    assert all(w["project imported"] for w in workers.values()), workers
    assert any(w["clip loaded"] for w in workers.values()), workers
