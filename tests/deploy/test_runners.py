"""Task runners: threads by default; a whole session on a 2-worker Dask cluster matches it."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from distributed import Client
from prefect.task_runners import ThreadPoolTaskRunner

from flows.runners import shared_cluster, task_runner
from photoindex.settings import Settings, get_settings
from tasks.phase import PhaseSummary
from tests.environ import environ
from tests.photos import make_photo_folder


def test_threads_are_the_default(data_dir: Path) -> None:
    assert isinstance(task_runner(Settings()), ThreadPoolTaskRunner)


@contextmanager
def _env(**values: str) -> Iterator[Settings]:
    """Settings from these PHOTOINDEX_* values, for this process and processes it starts."""
    get_settings.cache_clear()
    try:
        with environ(**{f"PHOTOINDEX_{k.upper()}": v for k, v in values.items()}):
            yield get_settings()
    finally:
        get_settings.cache_clear()


def _worker_state() -> dict[str, bool]:
    # Runs on each Dask worker.
    from photoindex.settings import get_settings
    from tasks.models.registry import clip_embedder

    return {
        "project imported": "tasks.embed" in sys.modules,
        "clip loaded": clip_embedder(get_settings()).loaded,
    }


def _results(settings: Settings) -> dict[str, Any]:
    """What a session left behind: statuses, vectors by image, faces, and the person split."""
    from tasks.catalog import Catalog
    from tasks.models.registry import clip_embedder
    from tasks.vectors import VectorStore, close_clients, point_id

    catalog = Catalog(settings)
    images = {
        r["sha256"]: (r["status"], r["n_faces"])
        for r in catalog.query("SELECT sha256, status, n_faces FROM images")
    }
    store = VectorStore(clip_embedder(settings).model_id, settings)
    shas = [h for h, (status, _) in sorted(images.items()) if status == "indexed"]
    vectors = {point_id(h): v for h, v in store.vectors(shas).items()}
    close_clients()
    faces = {
        r["face_id"]: np.asarray(r["embedding"])
        for r in catalog.query("SELECT face_id, embedding FROM faces")
    }
    groups: dict[str, set[str]] = {}
    for r in catalog.query("SELECT face_id, person_id FROM person_faces"):
        groups.setdefault(r["person_id"], set()).add(r["face_id"])
    return {
        "images": images,
        "vectors": vectors,
        "faces": faces,
        "persons": sorted(sorted(g) for g in groups.values()),
    }


@pytest.mark.usefixtures("prefect_harness")
def test_a_session_on_a_dask_cluster_matches_the_thread_pool_run(
    data_dir: Path, tmp_path: Path
) -> None:
    from flows.index_photos import index_photos

    photos = make_photo_folder(tmp_path / "photos", n_derived=3)
    # The same photos under another path: batch results persist under keys of content and
    # path, so the Dask run cannot take the thread run's results from storage.
    shutil.copytree(photos.root, tmp_path / "copy", symlinks=True)
    folders = {"threads": photos.root, "dask": tmp_path / "copy"}
    runs: dict[str, dict[str, Any]] = {}
    workers: dict[str, dict[str, bool]] = {}
    for runner in ("threads", "dask"):
        with _env(data_dir=str(tmp_path / runner), task_runner=runner, dask_workers="2") as s:
            if runner == "dask":
                # One cluster this test can inspect; the session attaches to it by address.
                with shared_cluster(s) as on_cluster, _env(
                    data_dir=str(tmp_path / runner),
                    task_runner=runner,
                    dask_address=str(on_cluster.dask_address),
                ):
                    state = index_photos(str(folders[runner]), return_state=True)
                    with Client(on_cluster.dask_address) as client:  # type: ignore[no-untyped-call]
                        workers = client.run(_worker_state)
            else:
                state = index_photos(str(folders[runner]), return_state=True)
            assert state.is_completed(), state.message
            summaries: list[PhaseSummary] = state.result(_sync=True)  # type: ignore[call-overload]
            assert [x.failed for x in summaries] == [0, 0, 0]
            runs[runner] = _results(s)

    threads, dask = runs["threads"], runs["dask"]
    assert dask["images"] == threads["images"]
    assert len(threads["vectors"]) == len(photos.photos)
    assert dask["vectors"].keys() == threads["vectors"].keys()
    for pid, vector in threads["vectors"].items():
        np.testing.assert_allclose(dask["vectors"][pid], vector, atol=1e-5)
    assert dask["faces"].keys() == threads["faces"].keys() and threads["faces"]
    for fid, embedding in threads["faces"].items():
        np.testing.assert_allclose(dask["faces"][fid], embedding, atol=1e-5)
    assert dask["persons"] == threads["persons"] and threads["persons"]
    # The batches ran on both worker processes, which imported the project and loaded CLIP.
    assert len(workers) == 2
    assert all(w["project imported"] for w in workers.values()), workers
    assert any(w["clip loaded"] for w in workers.values()), workers


def test_flow_heartbeats_turned_off_once_stay_off_without_new_settings() -> None:
    """A warm indexer turns the flows' heartbeats off once; the session's own blocks then
    build no new Prefect settings (each build cost 23 ms) and leave them off."""
    from prefect.settings import get_current_settings

    from flows.runners import without_flow_heartbeats

    assert get_current_settings().flows.heartbeat_frequency is not None
    with without_flow_heartbeats():
        outer = get_current_settings()
        assert outer.flows.heartbeat_frequency is None
        with without_flow_heartbeats():
            assert get_current_settings() is outer
        assert get_current_settings() is outer
    assert get_current_settings().flows.heartbeat_frequency is not None
