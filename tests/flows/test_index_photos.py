"""End to end: the real index-photos flow, real models, real Qdrant, a real Prefect server."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterParentFlowRunId,
)

from tasks.discover import hash_file
from tasks.phase import PhaseSummary
from tasks.progress import Counts
from tests.photos import BadCase, PhotoManifest, make_bad_cases, make_photo_folder

pytestmark = pytest.mark.usefixtures("prefect_harness", "data_dir")


@dataclass
class Library:
    root: Path
    photos: PhotoManifest
    odd: dict[str, BadCase]


@dataclass
class Run:
    session_id: UUID
    summaries: list[PhaseSummary]


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Library:
    """Real photos with recorded edits, plus a folder of odd and broken files."""
    root = tmp_path_factory.mktemp("library")
    return Library(root, make_photo_folder(root / "photos"), make_bad_cases(root / "odd"))


def _index(folder: Path) -> Run:
    from flows.index_photos import index_photos

    state = index_photos(str(folder), return_state=True)
    assert state.is_completed(), state.message
    # _sync: other tests leave an event loop behind, where result() would be a coroutine.
    summaries: list[PhaseSummary] = state.result(_sync=True)  # type: ignore[call-overload]
    assert state.state_details.flow_run_id is not None
    return Run(state.state_details.flow_run_id, summaries)


@pytest.fixture(scope="module")
def first(library: Library) -> Run:
    return _index(library.root)


@pytest.fixture(scope="module")
def second(first: Run, library: Library) -> Run:
    return _index(library.root)


def _catalog_rows(sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    from tasks.catalog import Catalog

    return Catalog().query(sql, params)


def test_every_good_photo_is_indexed_once_and_every_bad_file_has_a_reason(
    first: Run, library: Library
) -> None:
    indexed = {
        r["sha256"] for r in _catalog_rows("SELECT sha256 FROM images WHERE status='indexed'")
    }
    for photo in library.photos.photos:
        assert hash_file(photo.path) in indexed, photo.path
    reasons = {
        r["path"]: r["reason"]
        for r in _catalog_rows("SELECT path, reason FROM status WHERE status = 'skipped'")
    }
    for path, case in library.odd.items():
        if case.outcome in ("rejected", "skipped at decode"):
            shown = path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            assert shown in reasons, f"{case.what} was not recorded"
            assert reasons[shown].startswith(case.reason), (case.what, reasons[shown])
    embed = first.summaries[0]
    assert embed.phase == "embed" and embed.failed == 0
    assert embed.processed == len(indexed)
    assert embed.skipped == len(reasons)


def test_qdrant_holds_one_point_per_indexed_image(first: Run) -> None:
    from photoindex.settings import get_settings
    from tasks.models.registry import clip_embedder
    from tasks.vectors import VectorStore

    n_indexed = _catalog_rows("SELECT count(*) AS n FROM images WHERE status='indexed'")[0]["n"]
    store = VectorStore(clip_embedder(get_settings()).model_id)
    assert store.count() == n_indexed


def test_faces_found_where_people_are_and_nowhere_else(first: Run, library: Library) -> None:
    faces_by_sha = {
        r["sha256"]: r["n_faces"]
        for r in _catalog_rows("SELECT sha256, n_faces FROM images WHERE status='indexed'")
    }
    for photo in library.photos.photos:
        n = faces_by_sha[hash_file(photo.path)]
        if photo.faces == "some":
            assert n and n >= 1, photo.path
        elif photo.faces == "none":
            assert n == 0, photo.path
    group = next(
        p
        for p in library.photos.photos
        if p.source == "group_t1" and p.transform.startswith("original")
    )
    assert faces_by_sha[hash_file(group.path)] == 6
    crops = _catalog_rows("SELECT crop_path FROM faces")
    assert crops and all(Path(r["crop_path"]).is_file() for r in crops)


def test_faces_cluster_into_the_people_in_the_photos(first: Run) -> None:
    rows = _catalog_rows(
        "SELECT pf.person_id, f.image_path FROM faces f JOIN person_faces pf USING (face_id)"
    )
    by_person: dict[str, set[str]] = {}
    for r in rows:
        by_person.setdefault(r["person_id"], set()).add(Path(r["image_path"]).name)
    astronaut = [p for p, files in by_person.items() if "astronaut.jpg" in files]
    assert len(astronaut) == 1
    # Mirrored and re-encoded copies of the astronaut join her; nobody from the group does.
    assert {"astronaut-mirrored.jpg", "astronaut-webp.webp"} <= by_person[astronaut[0]]
    assert not any("t1" in name for name in by_person[astronaut[0]])
    # Six different people at the card table: six persons, none merged.
    group = [p for p, files in by_person.items() if "group_t1.jpg" in files]
    assert len(group) == 6


def _phase_runs(session_id: UUID) -> dict[str, tuple[str, Counts | None, float]]:
    # The sync client: a browser test's Playwright may own this thread's event loop.
    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[session_id])
            )
        )
        out: dict[str, tuple[str, Counts | None, float]] = {}
        for child in children:
            flow = client.read_flow(child.flow_id)
            artifacts = client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[child.id]))
            )
            progress = [a for a in artifacts if a.type == "progress"]
            assert len(progress) == 1, f"{flow.name} has {len(progress)} progress artifacts"
            assert child.state is not None
            out[flow.name] = (
                child.state.type.value,
                Counts.parse(progress[0].description),
                float(progress[0].data),  # type: ignore[arg-type]
            )
        return out


def test_each_phase_ran_as_a_subflow_and_its_artifact_reached_100(first: Run) -> None:
    runs = _phase_runs(first.session_id)
    assert set(runs) == {"embed-images", "detect-faces", "cluster-faces"}
    for name, (state, counts, progress) in runs.items():
        assert state == "COMPLETED", name
        assert progress == 100.0, name
        assert counts is not None and counts.done and counts.current == counts.total, name
    assert runs["embed-images"][1] is not None and runs["embed-images"][1].skipped > 0


def test_a_second_run_does_no_model_work(second: Run, first: Run) -> None:
    for before, after in zip(first.summaries, second.summaries, strict=True):
        assert after.processed == 0 and after.failed == 0, after
        assert after.reused == before.total, after
    n_faces = _catalog_rows("SELECT count(*) AS n FROM faces")[0]["n"]
    assert n_faces == sum(
        r["n_faces"] for r in _catalog_rows("SELECT n_faces FROM images WHERE n_faces IS NOT NULL")
    )


def test_search_with_an_images_own_vector_finds_it_first(first: Run) -> None:
    from photoindex.settings import get_settings
    from tasks.models.registry import clip_embedder
    from tasks.vectors import VectorStore

    model = clip_embedder(get_settings())
    store = VectorStore(model.model_id)
    for row in _catalog_rows(
        "SELECT sha256 FROM images WHERE status='indexed' ORDER BY path LIMIT 5"
    ):
        vector = store.vectors([row["sha256"]])[row["sha256"]]
        hits = store.search(vector, k=5)
        assert hits[0][1] == pytest.approx(1.0, abs=1e-4)
        # The same pixels re-encoded (the progressive copy) have the very same vector: a tie.
        first_equal = {h[2]["sha256"] for h in hits if h[1] >= hits[0][1] - 1e-6}
        assert row["sha256"] in first_equal, hits


def test_the_catalog_file_answers_plain_duckdb(first: Run) -> None:
    import duckdb

    from photoindex.settings import get_settings

    con = duckdb.connect(str(get_settings().data_dir / "catalog.duckdb"), read_only=True)
    try:
        images, faces, persons = con.execute(
            "SELECT (SELECT count(*) FROM images WHERE status='indexed'), "
            "(SELECT count(*) FROM faces), (SELECT count(*) FROM persons)"
        ).fetchone() or (0, 0, 0)
    finally:
        con.close()
    assert images > 20 and faces > 10 and persons >= 8


def test_the_cli_bar_follows_a_session_to_its_end(first: Run) -> None:
    from photoindex.cli import watch_session

    progress = watch_session(first.session_id, poll_s=0.01)
    assert progress.overall_status == "completed"
    assert progress.overall_progress.percentage == 100.0
