"""Routes that need no flow runs: starting sessions, search, persons, crops and errors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from api.app import create_app
from api.deps import get_launcher, get_persons, get_search
from api.library import PersonDirectory, SessionLauncher, TextSearch
from api.prefect_reader import PrefectReader
from api.schemas import SearchHit
from photoindex.settings import Settings

UNREACHABLE = "http://127.0.0.1:9/api"


class FakeLauncher:
    """Records what would have been started."""

    def __init__(self) -> None:
        self.calls: list[tuple[Path, bool]] = []
        self.session_id = uuid4()

    async def __call__(self, folder: Path, faces: bool) -> UUID:
        self.calls.append((folder, faces))
        return self.session_id


class FakeSearch(TextSearch):
    """Search without a model: echoes the query."""

    async def search(self, query: str, k: int) -> list[SearchHit]:
        return [SearchHit(path=f"/photos/{i}.jpg", score=1.0 - i / 10) for i in range(min(k, 3))]


class FakeDirectory(PersonDirectory):
    """The real crop guard over a fake catalog."""

    crops: dict[str, Path] = {}

    def _persons(self, limit: int, samples: int) -> list[dict[str, Any]]:
        return [{"person_id": "p1", "face_count": 3, "representative_face_id": "f1",
                 "sample_crops": ["/data/crops/f1.jpg"]}][:limit]

    def _crop(self, face_id: str) -> Path | None:
        return self.crops.get(face_id)


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("library")
    (root / "holiday").mkdir()
    (root / "file.jpg").write_bytes(b"x")
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def launcher() -> FakeLauncher:
    return FakeLauncher()


@pytest.fixture(scope="module")
def client(library: Path, data: Path, launcher: FakeLauncher) -> Iterator[TestClient]:
    """The API with Prefect unreachable and fake library services."""
    settings = Settings(prefect_api_url=UNREACHABLE, library_roots=[library], data_dir=data)
    app = create_app(settings, PrefectReader(settings, timeout_s=3))
    app.dependency_overrides[get_launcher] = lambda: launcher
    app.dependency_overrides[get_search] = lambda: FakeSearch(settings)
    app.dependency_overrides[get_persons] = lambda: FakeDirectory(settings)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def test_unreachable_prefect_is_a_503_that_says_so(client: TestClient) -> None:
    for path in (
        f"/api/v1/training/sessions/{uuid4()}/progress-unified",
        f"/api/v1/training/sessions/{uuid4()}/progress",
        f"/api/v1/face-sessions/{uuid4()}",
        "/api/v1/training/sessions",
        "/api/v1/healthz",
    ):
        response = client.get(path)
        assert response.status_code == 503, (path, response.text)
        assert "Prefect API" in response.json()["detail"]
        assert "unreachable" in response.json()["detail"]
    assert client.post(f"/api/v1/training/sessions/{uuid4()}/cancel").status_code == 503


def test_start_session_under_a_library_root(
    client: TestClient, library: Path, launcher: FakeLauncher
) -> None:
    response = client.post(
        "/api/v1/training/sessions",
        json={"folder": str(library / "holiday"), "skipFaceDetection": True},
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["sessionId"] == str(launcher.session_id)
    assert body["progressUrl"].endswith(f"/{launcher.session_id}/progress-unified")
    assert launcher.calls[-1] == ((library / "holiday").resolve(), False)


def test_start_session_refuses_folders_outside_the_roots(
    client: TestClient, library: Path, tmp_path: Path
) -> None:
    (tmp_path / "elsewhere").mkdir()
    (library / "escape").symlink_to(tmp_path / "elsewhere")
    for folder in (str(tmp_path / "elsewhere"), str(library / ".." / "x"),
                   str(library / "escape"), "relative/folder", "/etc"):
        response = client.post("/api/v1/training/sessions", json={"folder": folder})
        assert response.status_code == 403, (folder, response.text)
        assert "library root" in response.json()["detail"]


def test_start_session_needs_an_existing_folder(client: TestClient, library: Path) -> None:
    missing = client.post("/api/v1/training/sessions", json={"folder": str(library / "nope")})
    assert missing.status_code == 404
    assert "Folder not found" in missing.json()["detail"]
    a_file = client.post("/api/v1/training/sessions", json={"folder": str(library / "file.jpg")})
    assert a_file.status_code == 404
    assert client.post("/api/v1/training/sessions", json={}).status_code == 422


def test_search_bounds(client: TestClient) -> None:
    ok = client.get("/api/v1/search", params={"q": "a cat", "k": 2})
    assert ok.status_code == 200
    assert ok.json()["k"] == 2 and len(ok.json()["results"]) == 2
    bad: list[dict[str, str | int]] = [
        {"q": "cat", "k": 0}, {"q": "cat", "k": 101}, {"q": ""},
        {"q": "x" * 501}, {"k": 5}, {"q": "cat", "k": "many"},
    ]
    for params in bad:
        assert client.get("/api/v1/search", params=params).status_code == 422, params


def test_persons(client: TestClient) -> None:
    body = client.get("/api/v1/persons").json()
    assert body["persons"][0] == {
        "personId": "p1", "faceCount": 3, "representativeFaceId": "f1",
        "representativeCropUrl": "/api/v1/faces/f1/crop", "sampleCrops": ["/data/crops/f1.jpg"],
    }
    assert client.get("/api/v1/persons", params={"limit": 0}).status_code == 422


def test_face_crop_only_inside_the_data_folder(
    client: TestClient, data: Path, tmp_path: Path
) -> None:
    crop = data / "crops" / "f1.jpg"
    crop.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), "red").save(crop, "JPEG")
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(b"secret")
    FakeDirectory.crops = {
        "f1": crop,
        "outside": outside,
        "traversal": data / "crops" / ".." / ".." / outside.name,
    }
    ok = client.get("/api/v1/faces/f1/crop")
    assert ok.status_code == 200
    assert ok.headers["content-type"] == "image/jpeg"
    assert ok.content[:2] == b"\xff\xd8"
    for face_id in ("outside", "traversal", "unknown", "..%2F..%2Fetc%2Fpasswd"):
        response = client.get(f"/api/v1/faces/{face_id}/crop")
        assert response.status_code == 404, face_id
    assert client.get("/api/v1/faces/../../etc/passwd/crop").status_code == 404


def test_openapi_lists_every_endpoint(client: TestClient) -> None:
    paths = set(client.get("/openapi.json").json()["paths"])
    assert paths == {
        "/api/v1/training/sessions/{sessionId}/progress-unified",
        "/api/v1/training/sessions/{sessionId}/progress",
        "/api/v1/face-sessions/{sessionId}",
        "/api/v1/training/sessions",
        "/api/v1/training/sessions/{sessionId}/cancel",
        "/api/v1/training/sessions/{sessionId}/pause",
        "/api/v1/training/sessions/{sessionId}/resume",
        "/api/v1/search",
        "/api/v1/persons",
        "/api/v1/faces/{faceId}/crop",
        "/api/v1/healthz",
    }


def test_launcher_protocol_is_satisfied() -> None:
    launcher: SessionLauncher = FakeLauncher()
    assert callable(launcher)
