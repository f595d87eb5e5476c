"""GET /api/v1/search beyond plain text: more like this, min score, dates, a person, sorting."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.search import TextSearch
from photoindex.settings import Settings
from tasks.catalog import Catalog, now_utc
from tests.clip_tiny import tiny_settings
from tests.loopback import LOOPBACK

N = 40
PERSON_PHOTOS = (1, 2, 5)


def sha(i: int) -> str:
    return f"{i:064x}"


@pytest.fixture(scope="module")
def library(
    tiny_clip: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Settings, np.ndarray]]:
    """40 photos' vectors with capture times a month apart, and one person in three of them."""
    from tasks.models.registry import clip_embedder
    from tasks.vectors import VectorStore, close_clients

    settings = tiny_settings(
        tiny_clip,
        data_dir=tmp_path_factory.mktemp("search-features"),
        prefect_api_url="http://127.0.0.1:9/api",
    )
    model = clip_embedder(settings)
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((N, model.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    payloads = [
        {
            "path": f"/photos/{i}.jpg",
            "sha256": sha(i),
            "taken_at": f"{2018 + i // 12}-{i % 12 + 1:02d}-10T09:30:00",
            "taken_at_source": "exif",
        }
        for i in range(N)
    ]
    VectorStore(model.model_id, settings).upsert(vectors, payloads)
    close_clients()
    catalog = Catalog(settings)
    faces = [
        {
            "face_id": f"face{i}", "image_sha256": sha(i), "image_path": f"/photos/{i}.jpg",
            "bbox": [0.0, 0.0, 10.0, 10.0], "score": 0.9, "landmarks": [0.0] * 10,
            "embedding": [1.0, 0.0], "model": "sface", "crop_path": None,
            "indexed_at": now_utc(), "removed": False,
        }
        for i in PERSON_PHOTOS
    ]  # fmt: skip
    catalog.append("faces", faces)
    catalog.replace_people(
        persons=[{"person_id": "person-abc", "face_count": 3, "representative_face_id": "face1",
                  "model": "sface", "fingerprint": "x", "updated_at": now_utc()}],
        person_faces=[{"face_id": f"face{i}", "person_id": "person-abc", "probability": 1.0}
                      for i in PERSON_PHOTOS],
    )  # fmt: skip
    yield settings, vectors


@pytest.fixture(scope="module")
def client(library: tuple[Settings, np.ndarray]) -> Iterator[TestClient]:
    settings, _ = library
    search = TextSearch(settings, idle_close_s=0.5)
    with TestClient(
        create_app(settings, text_search=search), raise_server_exceptions=False, base_url=LOOPBACK
    ) as c:
        yield c
    search.close()


def get(client: TestClient, **params: Any) -> dict[str, Any]:
    response = client.get("/api/v1/search", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_more_like_this_ranks_by_the_photos_own_vector_and_leaves_it_out(
    client: TestClient, library: tuple[Settings, np.ndarray]
) -> None:
    _, vectors = library
    body = get(client, like=sha(7), k=5)
    assert body["like"] == sha(7) and body["query"] is None
    ids = [hit["photoId"] for hit in body["results"]]
    expected = [sha(int(i)) for i in np.argsort(-(vectors @ vectors[7])) if int(i) != 7][:5]
    assert ids == expected
    first = body["results"][0]
    assert first["thumbnailUrl"] == f"/api/v1/photos/{first['photoId']}/thumbnail"
    assert first["takenAt"].endswith("T09:30:00")


def test_min_score_leaves_out_weak_matches(client: TestClient) -> None:
    everything = get(client, like=sha(7), k=39)["results"]
    strong = get(client, like=sha(7), k=39, minScore=0.1)["results"]
    assert 0 < len(strong) < len(everything)
    assert all(hit["score"] >= 0.1 for hit in strong)
    assert strong == [hit for hit in everything if hit["score"] >= 0.1]


def test_after_and_before_keep_photos_captured_between(client: TestClient) -> None:
    hits = get(client, q="a dog", k=40, after="2019-01-01", before="2019-07-01")["results"]
    assert sorted(hit["takenAt"][:7] for hit in hits) == [f"2019-{m:02d}" for m in range(1, 7)]


def test_sort_by_capture_time(client: TestClient) -> None:
    newest = [h["takenAt"] for h in get(client, q="a dog", k=10, sort="newest")["results"]]
    oldest = [h["takenAt"] for h in get(client, q="a dog", k=10, sort="oldest")["results"]]
    assert newest == sorted(newest, reverse=True) and oldest == sorted(oldest)
    assert set(newest) == set(oldest)


def test_person_restricts_to_the_photos_they_appear_in(client: TestClient) -> None:
    hits = get(client, q="a person", k=20, person="person-abc")["results"]
    assert {hit["photoId"] for hit in hits} == {sha(i) for i in PERSON_PHOTOS}
    around = get(client, like=sha(1), k=20, person="person-abc")["results"]
    assert {hit["photoId"] for hit in around} == {sha(2), sha(5)}


@pytest.mark.parametrize(
    ("params", "detail"),
    [
        ({"like": "f" * 64}, "No indexed photo has the id"),
        ({"q": "a dog", "person": "person-nobody"}, "Person not found: person-nobody"),
    ],
)
def test_unknown_photo_or_person_is_404(
    client: TestClient, params: dict[str, str], detail: str
) -> None:
    response = client.get("/api/v1/search", params=params)
    assert response.status_code == 404, response.text
    assert detail in response.json()["detail"]


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({}, "query parameter 'q'"),
        ({"q": "a dog", "like": sha(1)}, "query parameter 'like'"),
        ({"like": "../../etc/passwd"}, "query parameter 'like'"),
        ({"q": "a dog", "minScore": "2"}, "query parameter 'minScore'"),
        ({"q": "a dog", "after": "2020-13-01"}, "query parameter 'after'"),
        ({"q": "a dog", "after": "2020-02-01", "before": "2020-01-01"}, "query parameter 'before'"),
        ({"q": "a dog", "sort": "random"}, "query parameter 'sort'"),
        ({"q": "a dog", "person": "../x"}, "query parameter 'person'"),
    ],
)
def test_bad_parameters_are_422_naming_the_parameter(
    client: TestClient, params: dict[str, str], named: str
) -> None:
    response = client.get("/api/v1/search", params=params)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail.startswith("Invalid request: " + named), detail
    assert detail.count(";") == 0, detail


def test_the_cli_searches_with_the_same_options(library: tuple[Settings, np.ndarray]) -> None:
    from typer.testing import CliRunner

    from photoindex.cli import app
    from photoindex.settings import get_settings
    from tests.environ import environ

    settings, _ = library
    env = {
        "PHOTOINDEX_DATA_DIR": str(settings.data_dir),
        "PHOTOINDEX_CLIP_MODEL": settings.clip_architecture,
        "PHOTOINDEX_CLIP_PRETRAINED": settings.clip_pretrained,
        "PHOTOINDEX_CLIP_CONFIG": str(settings.clip_config),
    }
    runner = CliRunner()
    with environ(**env):
        get_settings.cache_clear()
        try:
            found = runner.invoke(
                app, ["search", "--like", sha(1), "--person", "person-abc", "--sort", "oldest"]
            )
            both = runner.invoke(app, ["search", "a dog", "--like", sha(1)])
            dated = runner.invoke(app, ["search", "a dog", "-k", "40", "--after", "2021-01-01"])
        finally:
            get_settings.cache_clear()
    assert found.exit_code == 0, found.output
    lines = found.output.splitlines()
    assert [line.split()[-1] for line in lines] == ["/photos/2.jpg", "/photos/5.jpg"]
    assert lines[0].split()[1] == "2018-03-10"
    assert both.exit_code == 2 and "not both" in both.output
    assert dated.exit_code == 0, dated.output
    assert {line.split()[1][:4] for line in dated.output.splitlines()} == {"2021"}
