"""Session-wide test setup: offline Prefect harness, a data folder, a tiny CLIP model."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# Before anything imports Prefect: offline, quiet, and no hub downloads.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")


@pytest.fixture(autouse=True)
def _no_drivable_session_outlives_its_test() -> Iterator[None]:
    """A drivable session a test leaves running is abandoned, so its heartbeats never
    publish into the progress a later test records."""
    yield
    drivable = sys.modules.get("tests.api.drivable")
    if drivable is not None:
        drivable.abandon_all()


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny open_clip model with random weights, built now: (config, weights)."""
    from tests.clip_tiny import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="session")
def data_dir(
    tmp_path_factory: pytest.TempPathFactory, tiny_clip: tuple[Path, Path]
) -> Iterator[Path]:
    """One data folder for the session, with settings pointing at it and the tiny model."""
    from photoindex.settings import get_settings
    from tests.environ import environ

    data = tmp_path_factory.mktemp("photoindex-data")
    config, weights = tiny_clip
    patch = {
        "PHOTOINDEX_DATA_DIR": str(data),
        "PHOTOINDEX_CLIP_MODEL": config.stem,
        "PHOTOINDEX_CLIP_PRETRAINED": str(weights),
        "PHOTOINDEX_CLIP_CONFIG": str(config),
        "PHOTOINDEX_CLIP_BATCH_SIZE": "8",
        "PHOTOINDEX_FACE_BATCH_SIZE": "8",
        "PHOTOINDEX_PROGRESS_INTERVAL_S": "0.2",
    }
    with environ(**patch):
        get_settings.cache_clear()
        yield data
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One real Prefect server (SQLite, offline) for the whole test session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture(scope="session")
def prefect_api_url(prefect_harness: None) -> str:
    """The harness's API URL, passed explicitly to session processes, and to readers and
    threads outside the harness's settings context."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    assert url, "the Prefect test harness set no API URL"
    return str(url)


#: Tests that run whole sessions, servers or a browser: `make test-fast` leaves them out.
SLOW = (
    "resilience/",
    "deploy/",
    "browser/",
    "flows/",
    "photoindex/test_warm_indexer.py",
    "api/test_progress_e2e.py",
    "api/test_controls.py",
    "api/test_reader.py",
    "api/test_schemathesis.py",
    "tasks/test_cluster_scale.py",
    "tasks/test_phase.py",
    "tasks/test_control.py",
    "tasks/test_housekeeping.py",
    "api/test_bad_input_http.py",
    "test_prefect_server.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the slow tests `slow`, by where they live."""
    here = Path(__file__).parent
    for item in items:
        relative = item.path.relative_to(here).as_posix()
        if relative.startswith(SLOW):
            item.add_marker(pytest.mark.slow)
