"""Fixtures of the browser tests: Debian's chromium under Playwright, the real API under uvicorn."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, sync_playwright

from api.app import create_app
from api.prefect_reader import PrefectReader
from photoindex.settings import Settings
from tests.loopback import served_in_thread
from tests.photos import INSIGHTFACE_IMAGES

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"
PERSON_ID = "person-0001"
FACE_ID = "face-tom-hanks"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


@pytest.fixture(scope="session")
def chromium_executable() -> str:
    """Debian's chromium; skip without it, except in CI, where a missing install must fail."""
    found = shutil.which("chromium") or (CHROMIUM if Path(CHROMIUM).is_file() else None)
    if found is None:
        reason = (
            "Debian's chromium is not installed (apt-get install chromium); "
            "the browser tests drive it through Playwright"
        )
        if _in_ci():
            pytest.fail(f"{reason}. CI=true, so this fails instead of skipping.", pytrace=False)
        pytest.skip(reason)
    return found


@pytest.fixture(scope="module")
def browser(chromium_executable: str, prefect_harness: None) -> Iterator[Browser]:
    """One headless chromium per module (after the Prefect harness). Not per session:
    Playwright's event loop stays current until it stops, and later tests call asyncio.run."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium_executable, args=CHROMIUM_ARGS, headless=True
        )
        yield browser
        browser.close()


@pytest.fixture
def page_errors() -> list[str]:
    """Uncaught JavaScript errors of the test's page."""
    return []


@pytest.fixture
def page(browser: Browser, page_errors: list[str]) -> Iterator[Page]:
    """A fresh page; uncaught script errors land in `page_errors`."""
    context = browser.new_context(viewport={"width": 960, "height": 760}, locale="en-GB")
    context.set_default_timeout(15_000)
    new_page = context.new_page()
    new_page.on("pageerror", lambda error: page_errors.append(str(error)))
    yield new_page
    context.close()


@pytest.fixture(scope="module")
def library_data(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """A data folder of its own whose catalog holds one person with a real face crop."""
    from tasks.catalog import Catalog

    data = tmp_path_factory.mktemp("browser-data")
    settings = Settings(data_dir=data)
    settings.crops_dir.mkdir(parents=True, exist_ok=True)
    crop = settings.crops_dir / f"{FACE_ID}.jpg"
    with Image.open(INSIGHTFACE_IMAGES / "Tom_Hanks_54745.png") as shipped:
        shipped.convert("RGB").save(crop, quality=90)
    now = datetime.now(UTC)
    catalog = Catalog(settings)
    catalog.append(
        "faces",
        [
            {
                "face_id": FACE_ID,
                "image_sha256": "0" * 64,
                "image_path": str(INSIGHTFACE_IMAGES / "Tom_Hanks_54745.png"),
                "score": 0.9,
                "model": "test",
                "crop_path": str(crop),
                "indexed_at": now,
            }
        ],
    )
    catalog.replace(
        "persons",
        [
            {
                "person_id": PERSON_ID,
                "face_count": 1,
                "representative_face_id": FACE_ID,
                "model": "test",
                "fingerprint": "test",
                "updated_at": now,
            }
        ],
    )
    catalog.replace(
        "person_faces", [{"face_id": FACE_ID, "person_id": PERSON_ID, "probability": 1.0}]
    )
    _index_photos(settings, tmp_path_factory.mktemp("browser-photos"))
    return data


INDEXED_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "motorcycle_left", "group_t1")


def _index_photos(settings: Settings, folder: Path) -> None:
    """Real photos on disk, embedded by the tests' tiny CLIP and recorded as the embed phase
    records them (manifest, status rows, vectors with payloads), so search shows them."""
    from tasks.catalog import Catalog, status_row
    from tasks.decode import capture_time, decode_image
    from tasks.discover import hash_file
    from tasks.models.registry import clip_embedder
    from tasks.vectors import VectorStore, close_clients
    from tests.photos import real_photos, save_photo

    photos = real_photos()
    paths = [folder / f"{name}.jpg" for name in INDEXED_PHOTOS]
    for name, path in zip(INDEXED_PHOTOS, paths, strict=True):
        save_photo(photos[name], path)
    files = [(str(p), hash_file(p), p.stat().st_size, p.stat().st_mtime) for p in paths]
    catalog = Catalog(settings)
    catalog.write_manifest(str(folder), files)
    model = clip_embedder(settings)
    decoded = [decode_image(str(p), max_side=448) for p in paths]
    vectors = model.embed_images([d.image for d in decoded])
    payloads = [
        {"path": p, "sha256": h, "width": d.width, "height": d.height, **capture_time(d.taken, m)}
        for (p, h, _, m), d in zip(files, decoded, strict=True)
    ]
    VectorStore(model.model_id, settings).upsert(vectors, payloads)
    close_clients()
    catalog.append(
        "status",
        [status_row(h, "embed", model.model_id, p, "indexed", sha256=h) for p, h, _, _ in files],
    )


@pytest.fixture(scope="module")
def live_api(browser: Browser, library_data: Path) -> Iterator[str]:
    """The real API under uvicorn on 127.0.0.1 (a free port), reading the Prefect harness."""
    from prefect.settings import PREFECT_API_URL

    settings = Settings(prefect_api_url=str(PREFECT_API_URL.value()), data_dir=library_data)
    reader = PrefectReader(settings, cache_ttl_s=0.2, calibration_sessions=0)
    with served_in_thread(create_app(settings, reader)) as (port, _):
        yield f"http://127.0.0.1:{port}"


def screenshot(page: Page, name: str) -> Path:
    """Save a full-page screenshot under test-artifacts/browser/."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
