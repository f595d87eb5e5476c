"""Shared setup of the resilience tests: one photo folder and one clean run of it."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.photos import PhotoManifest, make_photo_folder
from tests.resilience.helpers import (
    Snapshot,
    assert_healthy,
    index_in_process,
    snapshot,
    use_data_dir,
)


@dataclass(frozen=True)
class Clean:
    """A clean, uninterrupted run of the shared folder in its own data folder."""

    folder: Path
    photos: PhotoManifest
    data: Path
    snapshot: Snapshot
    seconds: float


@pytest.fixture(scope="session")
def clean(tmp_path_factory: pytest.TempPathFactory, data_dir: Path, prefect_harness: None) -> Clean:
    """Real photos with recorded edits, indexed once without interruption."""
    folder = tmp_path_factory.mktemp("resilience-photos")
    photos = make_photo_folder(folder, n_derived=8)
    data = tmp_path_factory.mktemp("resilience-clean")
    started = time.monotonic()
    with use_data_dir(data) as settings:
        index_in_process(folder)
        seconds = time.monotonic() - started
        shot = snapshot(settings)
        assert_healthy(settings)
    assert shot.indexed and shot.faces and shot.persons and shot.failed == 0
    return Clean(folder, photos, data, shot, seconds)
