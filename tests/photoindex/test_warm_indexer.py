"""The warm indexer: sessions handed to it run with the models it already holds."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from photoindex.settings import Settings, get_settings
from tests.environ import environ
from tests.photos import make_photo_folder
from tests.resilience.helpers import child_env, seed_face_models, wait_until

pytestmark = pytest.mark.timeout(900)


class Warm:
    """A warm indexer process for one data folder, and the settings that reach it."""

    def __init__(self, data: Path, api_url: str) -> None:
        self.data = data
        from photoindex.prefect_server import OFFLINE_ENV

        self.env = child_env(data, api_url, **OFFLINE_ENV)  # as `photoindex serve` exports
        self.log = data / "indexer.log"
        self.sessions: list[UUID] = []  # submitted to it, in order
        with environ(**self.env):
            get_settings.cache_clear()
            self.settings = get_settings()
        get_settings.cache_clear()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "photoindex.indexer"],
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
        )

    def status(self) -> dict[str, Any]:
        from photoindex.indexer import IndexerClient, socket_path

        return IndexerClient(socket_path(self.settings)).status()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


@pytest.fixture(scope="module")
def warm(
    tmp_path_factory: pytest.TempPathFactory, data_dir: Path, prefect_api_url: str
) -> Iterator[Warm]:
    data = tmp_path_factory.mktemp("warm-data")
    seed_face_models(data)
    service = Warm(data, prefect_api_url)
    from photoindex.indexer import warm_indexer

    try:
        wait_until(lambda: warm_indexer(service.settings), 300, "the warm indexer", 0.5)
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    first = tmp_path_factory.mktemp("warm-photos-1")
    make_photo_folder(first, n_derived=4)
    second = tmp_path_factory.mktemp("warm-photos-2")
    make_photo_folder(second, n_derived=9)
    return first, second


def _submit(warm: Warm, folder: Path) -> UUID:
    from photoindex.launch import submit_session

    with environ(**warm.env):
        get_settings.cache_clear()
        try:
            launched = submit_session(folder, faces=True)
        finally:
            get_settings.cache_clear()
    assert launched.route == "warm" and launched.process is None
    warm.sessions.append(launched.session_id)
    return launched.session_id


def _follow(warm: Warm, session_id: UUID) -> list[float]:
    """The unified percentage, polled until the session ends; the last answer's status."""
    from api.prefect_reader import PrefectReader

    async def poll() -> list[float]:
        reader = PrefectReader(warm.settings, cache_ttl_s=0)
        seen: list[float] = []
        async with reader.connected():
            for _ in range(1200):
                p = await reader.unified(session_id)
                seen.append(p.overall_progress.percentage)
                if p.overall_status in {"completed", "failed", "cancelled"}:
                    assert p.overall_status == "completed", p.warnings
                    return seen
                await asyncio.sleep(0.25)
        raise AssertionError(f"session {session_id} did not end")

    return asyncio.run(poll())


def _wipe(settings: Settings) -> None:
    for name in ("catalog", "qdrant", "crops"):
        shutil.rmtree(settings.data_dir / name, ignore_errors=True)


def test_two_sessions_in_a_row_the_second_loads_no_model(
    warm: Warm, folders: tuple[Path, Path]
) -> None:
    loaded = warm.status()
    assert loaded["models"], "the warm indexer holds no model after warming up"
    loads_before = loaded["model_loads"]

    first = _submit(warm, folders[0])
    _follow(warm, first)
    _wipe(warm.settings)  # the second session has all its photos to do again
    second = _submit(warm, folders[1])
    seen = _follow(warm, second)

    # The run reads Completed a moment before the indexer's loop has counted it.
    after = wait_until(
        lambda: (s := warm.status())["sessions_run"] == 2 and s, 60, "both sessions counted"
    )
    assert after["model_loads"] == loads_before, "a session on the warm indexer loaded a model"
    assert seen == sorted(seen), f"the percentage went down: {seen}"
    # Its first photos were decoded while Prefect started the runs, and the phase took them.
    ahead = after["read_ahead"]
    assert ahead["decoded"] >= 1 and ahead["taken"] == ahead["decoded"], ahead


def test_unloaded_models_come_back_for_the_next_session(
    warm: Warm, folders: tuple[Path, Path]
) -> None:
    """What idleness does: the models go, and the next session loads them again."""
    from photoindex.indexer import IndexerClient, socket_path

    before = warm.status()
    dropped = IndexerClient(socket_path(warm.settings)).unload()
    assert sorted(dropped) == sorted(before["models"]) and warm.status()["models"] == []
    _wipe(warm.settings)
    _follow(warm, _submit(warm, folders[0]))
    after = wait_until(
        lambda: (s := warm.status())["sessions_run"] > before["sessions_run"] and s, 60,
        "the session counted",
    )
    assert after["model_loads"] > before["model_loads"]
    assert sorted(after["models"]) == sorted(before["models"])


def test_the_runs_logs_reach_the_prefect_ui(warm: Warm, folders: tuple[Path, Path]) -> None:
    """What each phase did is in its run's logs, which the Prefect UI shows."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
        LogFilter,
        LogFilterFlowRunId,
    )

    if not warm.sessions:  # run on its own
        _follow(warm, _submit(warm, folders[0]))

    async def messages() -> list[str]:
        async with get_client() as client:  # this indexer's runs only: the server is shared
            runs = await client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["embed-images"])),
                flow_run_filter=FlowRunFilter(
                    parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=warm.sessions)
                ),
            )
            assert runs
            logs = await client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[r.id for r in runs]))
            )
        return [log.message for log in logs]

    with environ(**warm.env):
        found = asyncio.run(messages())
    assert any(m.startswith("embed: ") and "to do" in m for m in found), found


def test_second_session_is_calibrated_with_start_up(warm: Warm) -> None:
    """After the sessions above, the next one's weights include a measured start-up."""
    from api.prefect_reader import PrefectReader

    async def weights() -> str:
        reader = PrefectReader(warm.settings, cache_ttl_s=0)
        async with reader.connected():
            sessions = await reader.list_sessions(limit=1)
            p = await reader.unified(sessions[0].session_id)
            return p.weights_source

    assert "with start-up" in asyncio.run(weights())


def test_a_session_cancelled_before_it_starts_never_runs(
    warm: Warm, folders: tuple[Path, Path]
) -> None:
    from api import controls
    from api.prefect_reader import PrefectReader
    from photoindex.indexer import IndexerClient, socket_path
    from photoindex.launch import create_session

    with environ(**warm.env):
        session_id = asyncio.run(create_session(folders[0]))

    async def cancel() -> str:
        reader = PrefectReader(warm.settings, cache_ttl_s=0)
        async with reader.connected():
            await controls.cancel(reader, session_id)
            return (await reader.unified(session_id)).overall_status

    assert asyncio.run(cancel()) == "cancelled"
    runs_before = warm.status()["sessions_run"]
    IndexerClient(socket_path(warm.settings)).run(session_id)
    wait_until(
        lambda: warm.status()["sessions_run"] == runs_before + 1, 60, "the indexer to refuse it"
    )

    async def state() -> tuple[str, int]:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

        async with get_client() as client:
            run = await client.read_flow_run(session_id)
            children = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[session_id])
                )
            )
        return str(run.state_type.value if run.state_type else None), len(children)

    with environ(**warm.env):
        assert asyncio.run(state()) == ("CANCELLED", 0)


def test_concurrent_starts_start_exactly_one_session(
    warm: Warm, folders: tuple[Path, Path]
) -> None:
    from photoindex.launch import submit_session
    from tasks.lock import LibraryBusy

    _wipe(warm.settings)
    started: list[UUID] = []
    refused: list[str] = []
    gate = threading.Barrier(4)

    def post() -> None:
        gate.wait()
        try:
            started.append(submit_session(folders[1], True, warm.settings).session_id)
        except LibraryBusy as err:
            refused.append(str(err))

    with environ(**warm.env):
        threads = [threading.Thread(target=post) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert len(started) == 1 and len(refused) == 3, (started, refused)
    assert all("already indexing" in r for r in refused)
    _follow(warm, started[0])


def test_a_due_scheduled_run_of_the_deployment_runs_warm(
    warm: Warm, folders: tuple[Path, Path]
) -> None:
    """The nightly run: with `photoindex serve` up, the warm indexer takes it when it is due."""
    from prefect.client.orchestration import get_client
    from prefect.states import Scheduled

    from photoindex.launch import DEPLOYMENT_NAME

    flow_name, deployment_name = DEPLOYMENT_NAME.split("/")

    async def schedule() -> UUID:
        async with get_client() as client:
            flow_id = await client.create_flow_from_name(flow_name)
            deployment_id = await client.create_deployment(
                flow_id, deployment_name, entrypoint="flows/index_photos.py:index_photos",
                parameters={"folder": str(folders[0]), "faces": True},
            )  # fmt: skip
            run = await client.create_flow_run_from_deployment(
                deployment_id, state=Scheduled()
            )
            return run.id

    async def final(run_id: UUID) -> tuple[str | None, list[str]]:
        async with get_client() as client:
            run = await client.read_flow_run(run_id)
        state = run.state_type.value if run.state_type is not None else None
        return state if state in {"COMPLETED", "FAILED", "CRASHED"} else None, run.tags

    with environ(**warm.env):
        run_id = asyncio.run(schedule())
        def ended() -> tuple[str, list[str]] | None:
            state, tags = asyncio.run(final(run_id))
            return (state, tags) if state is not None else None

        state, tags = wait_until(ended, 180, "the scheduled run to end", 1.0)
    assert state == "COMPLETED"
    assert "photoindex-launch:warm" in tags
