"""GET /api/v1/photos/{photoId}/thumbnail: a small JPEG of indexed photos, and of nothing else."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from api.app import create_app
from photoindex.settings import Settings
from tasks.catalog import Catalog, status_row
from tasks.discover import hash_file
from tests.loopback import LOOPBACK
from tests.photos import real_photos, save_photo


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, dict[str, Path]]:
    """Two photos on disk, one indexed by the embed phase and one only scanned."""
    root = tmp_path_factory.mktemp("library")
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("data"), prefect_api_url="http://127.0.0.1:9/api"
    )
    indexed, scanned = root / "chelsea.jpg", root / "coffee.jpg"
    shots = real_photos()
    save_photo(shots["chelsea"], indexed, orientation=6)  # stored sideways, shown upright
    save_photo(shots["coffee"], scanned)
    catalog = Catalog(settings)
    files = [
        (str(p), hash_file(p), p.stat().st_size, p.stat().st_mtime) for p in (indexed, scanned)
    ]
    catalog.write_manifest(str(root), files)
    sha = files[0][1]
    catalog.append("status", [status_row(sha, "embed", "m", str(indexed), "indexed", sha256=sha)])
    return settings, {"indexed": indexed, "scanned": scanned}


@pytest.fixture(scope="module")
def client(photos: tuple[Settings, dict[str, Path]]) -> Iterator[TestClient]:
    settings, _ = photos
    with TestClient(create_app(settings), raise_server_exceptions=False, base_url=LOOPBACK) as c:
        yield c


def test_an_indexed_photo_has_a_small_upright_cached_thumbnail(
    client: TestClient, photos: tuple[Settings, dict[str, Path]]
) -> None:
    settings, paths = photos
    sha = hash_file(paths["indexed"])
    response = client.get(f"/api/v1/photos/{sha}/thumbnail")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(response.content)) as thumb:
        width, height = thumb.size
    with Image.open(paths["indexed"]) as stored:
        assert stored.height > stored.width  # orientation 6: stored sideways ...
    assert max(width, height) == 320 and width > height  # ... shown upright, as the original
    original = real_photos()["chelsea"].size
    assert abs(width / height - original[0] / original[1]) < 0.02
    cached = settings.data_dir / "thumbs" / sha[:2] / f"{sha}.jpg"
    assert cached.read_bytes() == response.content
    again = client.get(f"/api/v1/photos/{sha}/thumbnail")
    assert again.content == response.content


@pytest.mark.parametrize("which", ["scanned", "unknown"])
def test_photos_not_indexed_are_404(
    client: TestClient, photos: tuple[Settings, dict[str, Path]], which: str
) -> None:
    _, paths = photos
    sha = hash_file(paths["scanned"]) if which == "scanned" else "a" * 64
    response = client.get(f"/api/v1/photos/{sha}/thumbnail")
    assert response.status_code == 404
    assert response.json()["detail"] == "Photo not found"


@pytest.mark.parametrize(
    "photo_id", ["..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "ABCDEF" + "0" * 58, "0" * 63]
)
def test_anything_but_a_photo_id_is_refused(client: TestClient, photo_id: str) -> None:
    response = client.get(f"/api/v1/photos/{photo_id}/thumbnail")
    assert response.status_code in (404, 422), response.text
    assert response.headers["content-type"].startswith("application/json")
