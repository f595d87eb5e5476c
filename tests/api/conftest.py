"""Fixtures of the API tests: the shared Prefect harness's URL and a module-scoped client."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.prefect_reader import PrefectReader
from photoindex.settings import Settings
from tests.clip_tiny import tiny_settings
from tests.loopback import LOOPBACK, served_in_thread

Progress = dict[str, Any]


@pytest.fixture(scope="module")
def api(prefect_api_url: str) -> Iterator[TestClient]:
    """The real API on the harness, with the seed's weights (no calibration)."""
    settings = Settings(prefect_api_url=prefect_api_url)
    reader = PrefectReader(settings, cache_ttl_s=0.2, calibration_sessions=0)
    app = create_app(settings, reader)
    with TestClient(app, raise_server_exceptions=False, base_url=LOOPBACK) as client:
        yield client


def progress_of(client: TestClient, session_id: UUID) -> Progress:
    """GET progress-unified and insist on a 200."""
    response = client.get(f"/api/v1/training/sessions/{session_id}/progress-unified")
    assert response.status_code == 200, response.text
    body: Progress = response.json()
    return body


def wait_for(
    client: TestClient,
    session_id: UUID,
    condition: Callable[[Progress], bool],
    timeout: float = 30,
) -> Progress:
    """Poll progress-unified until `condition` holds; fail with the last answer otherwise."""
    deadline = time.monotonic() + timeout
    last: Progress = {}
    while time.monotonic() < deadline:
        last = progress_of(client, session_id)
        if condition(last):
            return last
        time.sleep(0.1)
    raise AssertionError(f"condition not reached in {timeout} s; last progress: {last}")


@pytest.fixture(scope="module")
def served_api(
    prefect_api_url: str,
    tiny_clip: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """The real API under uvicorn on 127.0.0.1, with its own data folder and the tiny model."""


    settings = tiny_settings(
        tiny_clip, prefect_api_url=prefect_api_url, data_dir=tmp_path_factory.mktemp("api-data")
    )
    app = create_app(settings, PrefectReader(settings, cache_ttl_s=0.2))
    with served_in_thread(app) as (port, _):
        yield f"http://127.0.0.1:{port}"
