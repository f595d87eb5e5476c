"""Shared fixtures of the phases' tests: settings with a data folder of the test's own, and
a stand-in for Prefect's progress artifacts (what a phase published, without a server)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest

from photoindex.settings import Settings, get_settings
from tasks import progress
from tasks.progress import Counts
from tests.resilience.helpers import seed_face_models


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """The session's settings with a data folder (catalog, cache, face models) of this
    test's own. Modules that need other settings define their own fixture."""
    data = tmp_path / "data"
    seed_face_models(data)
    return get_settings().model_copy(update={"data_dir": data})


class Recorder:
    """Records each progress update as (percentage, counts); `fail` plays an outage."""

    def __init__(self, fail: bool = False) -> None:
        self.updates: list[tuple[float, Counts | None]] = []
        self.fail = fail
        self.created: set[UUID] = set()

    def create(self, **_: Any) -> UUID:
        if self.fail:
            raise ConnectionError("Prefect is down")
        artifact_id = uuid4()
        self.created.add(artifact_id)
        return artifact_id

    def update(self, artifact_id: UUID, progress: float, description: str) -> None:
        if self.fail:
            raise ConnectionError("Prefect is down")
        if artifact_id in self.created:  # not a reporter an earlier test left behind
            self.updates.append((progress, Counts.parse(description)))

    def published(self, n: int, within_s: float = 1.0) -> Counts | None:
        """The counts of the `n`th update, once the reporter's thread has sent it (it
        publishes in the background); None if it did not come within `within_s`."""
        deadline = time.monotonic() + within_s
        while len(self.updates) < n and time.monotonic() < deadline:
            time.sleep(0.005)
        return self.updates[n - 1][1] if len(self.updates) >= n else None

    def install(self, monkeypatch: pytest.MonkeyPatch) -> Recorder:
        monkeypatch.setattr(progress, "create_progress_artifact", self.create)
        monkeypatch.setattr(progress, "update_progress_artifact", self.update)
        return self


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    return Recorder().install(monkeypatch)
