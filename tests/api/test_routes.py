"""Routes that need no flow runs: starting sessions, search, persons, crops and errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from api.app import create_app
from api.deps import get_launcher, get_persons, get_search
from api.folders import SessionLauncher, launch_session
from api.prefect_reader import PrefectReader
from api.schemas import SearchHit
from api.search import PersonDirectory, SearchQuery, SearchResult, TextSearch
from photoindex.settings import Settings
from tests.loopback import LOOPBACK

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

    async def search(self, query: SearchQuery) -> SearchResult:
        hits = [
            SearchHit(path=f"/photos/{i}.jpg", score=1.0 - i / 10) for i in range(min(query.k, 3))
        ]
        return SearchResult(hits, encode_s=0.004, vectors_s=0.002)


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
    # Prefect's client retries a refused connection in its transport (3 tries, 0.5 + 1 s of
    # backoff): a 3 s limit read as a timeout, not "unreachable", on a loaded CI machine.
    app = create_app(settings, PrefectReader(settings, timeout_s=10))
    app.dependency_overrides[get_launcher] = lambda: launcher
    app.dependency_overrides[get_search] = lambda: FakeSearch(settings)
    app.dependency_overrides[get_persons] = lambda: FakeDirectory(settings)
    with TestClient(app, raise_server_exceptions=False, base_url=LOOPBACK) as c:
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
    assert client.get("/api/v1/search", params={"q": "cat", "k": 200}).status_code == 200
    bad: list[dict[str, str | int]] = [
        {"q": "cat", "k": 0}, {"q": "cat", "k": 201}, {"q": ""},
        {"q": "x" * 501}, {"k": 5}, {"q": "cat", "k": "many"},
    ]
    for params in bad:
        assert client.get("/api/v1/search", params=params).status_code == 422, params


def invalid(response: Any) -> str:
    """Insist on a JSON 422 in our shape; return its sentence."""
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"detail", "errors"}
    assert isinstance(body["detail"], str) and body["detail"].startswith("Invalid request: ")
    assert all(set(e) == {"loc", "msg", "type"} for e in body["errors"])
    detail: str = body["detail"]
    return detail


@pytest.mark.parametrize(
    ("k", "says"),
    [
        (0, "greater than or equal to 1 (got '0')"),
        (-3, "greater than or equal to 1 (got '-3')"),
        (10**9, "less than or equal to 200 (got '1000000000')"),
        (10**30, "less than or equal to 200"),
        ("1e3", "valid integer"),
        ("", "valid integer"),
    ],
)
def test_search_k_out_of_bounds_says_which_limit(client: TestClient, k: object, says: str) -> None:
    detail = invalid(client.get("/api/v1/search", params={"q": "cat", "k": str(k)}))
    assert "query parameter 'k'" in detail and says in detail, detail


def test_search_text_limits(client: TestClient) -> None:
    huge = client.get("/api/v1/search", params={"q": "x" * 60_000})  # httpx's URL limit is 64 kB
    detail = invalid(huge)
    assert "at most 500 characters (got 60000 characters)" in detail
    assert len(huge.content) < 1000, "a huge query is not echoed back"
    assert "control characters" in invalid(client.get("/api/v1/search", params={"q": "a\x00b"}))
    assert "control characters" in invalid(client.get("/api/v1/search", params={"q": "\x1b[2J"}))
    assert "only spaces" in invalid(client.get("/api/v1/search", params={"q": " \t "}))
    for text in ("🐶 on the beach 🏖️", "犬と猫", "Ünïcödé ñ", "a\u200db", "x" * 500, "\ufffd"):
        ok = client.get("/api/v1/search", params={"q": text})
        assert ok.status_code == 200, (text, ok.text)
        assert ok.json()["query"] == text


@pytest.mark.parametrize(
    "face_id",
    ["%2E%2E", "a%00b", "%F0%9F%90%B6", "a" * 65,
     "a" * 5000, "crop.jpg", "x%20y"],
)
def test_malformed_face_ids_are_422(client: TestClient, face_id: str) -> None:
    detail = invalid(client.get(f"/api/v1/faces/{face_id}/crop"))
    assert "path parameter 'faceId'" in detail


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/faces/..%2F..%2Fetc%2Fpasswd/crop",
        "/api/v1/faces/%2Fetc%2Fpasswd/crop",
        "/api/v1/training/sessions/..%2F..%2F/progress-unified",
        "/api/v1/face-sessions/..%2F..%2Fetc%2Fpasswd",
        "/api/v1/training/sessions/%2F/cancel",
    ],
)
def test_encoded_slashes_in_ids_match_no_route(client: TestClient, path: str) -> None:
    response = client.request("POST" if path.endswith("cancel") else "GET", path)
    assert response.status_code == 404, response.text
    assert response.json() == {"detail": "Not Found"}


@pytest.mark.parametrize(
    "session_id",
    ["not-a-uuid", "1" * 10_000, "%00", "%2E%2E", "%F0%9F%90%B6", "123",
     "00000000-0000-0000-0000-00000000000g"],
)
def test_malformed_session_ids_are_422(client: TestClient, session_id: str) -> None:
    for method, path in (
        ("GET", f"/api/v1/training/sessions/{session_id}/progress-unified"),
        ("GET", f"/api/v1/training/sessions/{session_id}/progress"),
        ("GET", f"/api/v1/face-sessions/{session_id}"),
        ("POST", f"/api/v1/training/sessions/{session_id}/pause"),
    ):
        detail = invalid(client.request(method, path))
        assert "path parameter 'sessionId'" in detail and "valid UUID" in detail


def test_bad_folders_never_500(client: TestClient, library: Path) -> None:
    def start(body: bytes) -> Any:
        return client.post(
            "/api/v1/training/sessions", content=body,
            headers={"content-type": "application/json"},
        )

    nul = start(b'{"folder": "/photos/a\\u0000b"}')
    assert "control characters" in invalid(nul)
    too_long_name = start(json.dumps({"folder": str(library / ("a" * 300))}).encode())
    assert too_long_name.status_code == 404, too_long_name.text
    assert "Folder not found" in too_long_name.json()["detail"]
    unknown_user = start(b'{"folder": "~no-such-user-here/photos"}')
    assert unknown_user.status_code == 403, unknown_user.text
    assert "not valid JSON" in invalid(start(b"{folder: 1"))
    assert "body field 'folder'" in invalid(start(b'{"folder": 5}'))
    assert "at most 4096 characters" in invalid(start(json.dumps({"folder": "/" * 5000}).encode()))
    undecodable = start(b'{"folder": "\xff\xfe"}')
    assert undecodable.status_code == 400, undecodable.text
    assert undecodable.json()["detail"]
    loop = library / "loop"
    loop.symlink_to(loop)
    looping = start(json.dumps({"folder": str(loop / "x")}).encode())
    assert looping.status_code == 404, looping.text


def test_library_busy_is_a_409(client: TestClient, library: Path, launcher: FakeLauncher) -> None:
    """Another session indexing into the data folder: 409 with the flows' explanation."""
    from tasks.lock import LibraryBusy

    async def busy(folder: Path, faces: bool) -> UUID:
        raise LibraryBusy("session 123 is already indexing into /data; one session at a time")

    app = client.app
    assert isinstance(app, FastAPI)
    app.dependency_overrides[get_launcher] = lambda: busy
    try:
        response = client.post(
            "/api/v1/training/sessions", json={"folder": str(library / "holiday")}
        )
    finally:
        app.dependency_overrides[get_launcher] = lambda: launcher
    assert response.status_code == 409, response.text
    assert "already indexing" in response.json()["detail"]


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
    (data / "crops" / "link.jpg").unlink(missing_ok=True)
    (data / "crops" / "link.jpg").symlink_to("/etc/passwd")
    (data / "catalog").mkdir(exist_ok=True)
    (data / "catalog" / "not-a-crop.jpg").write_bytes(crop.read_bytes())
    FakeDirectory.crops = {
        "f1": crop,
        "outside": outside,
        "traversal": data / "crops" / ".." / ".." / outside.name,
        "passwd": Path("/etc/passwd"),
        "relative": Path("../../../../../../etc/passwd"),
        "link": data / "crops" / "link.jpg",
        "notcrop": data / "catalog" / "not-a-crop.jpg",
        "nul": Path(str(data / "crops" / "f1.jpg") + "\x00.png"),
        "folder": data / "crops",
    }
    ok = client.get("/api/v1/faces/f1/crop")
    assert ok.status_code == 200
    assert ok.headers["content-type"] == "image/jpeg"
    assert ok.content[:2] == b"\xff\xd8"
    for face_id in (*FakeDirectory.crops.keys() - {"f1"}, "unknown", "..%2F..%2Fetc%2Fpasswd"):
        response = client.get(f"/api/v1/faces/{face_id}/crop")
        assert response.status_code == 404, face_id
        assert response.json() in ({"detail": "Face crop not found"}, {"detail": "Not Found"})
        assert b"root:" not in response.content
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
        "/api/v1/photos/{photoId}/thumbnail",
        "/api/v1/healthz",
    }


def test_the_real_launcher_hands_the_folder_to_photoindex_launch(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`launch_session` (what the POST calls) returns the id `submit_session` gave, and
    lets a busy library through as `tasks.lock.LibraryBusy` (the 409 above)."""
    import anyio

    import photoindex.launch
    from photoindex.launch import Launched
    from tasks.lock import LibraryBusy

    asked: list[tuple[Path, bool]] = []
    session = uuid4()

    def submit(folder: Path, faces: bool = True) -> Launched:
        asked.append((folder, faces))
        if folder.name == "busy":
            raise LibraryBusy("session 123 is already indexing into /data")
        return Launched(session, "warm")

    monkeypatch.setattr(photoindex.launch, "submit_session", submit)
    launcher: SessionLauncher = launch_session
    assert anyio.run(launcher, tmp_path / "holiday", False) == session
    assert asked == [(tmp_path / "holiday", False)]
    with pytest.raises(LibraryBusy, match="already indexing"):
        anyio.run(launcher, tmp_path / "busy", True)
