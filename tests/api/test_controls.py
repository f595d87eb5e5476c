"""Pause, resume and cancel on their own: the API's side (`api.controls`, tags and states on
the session's runs) and the flows' side (`tasks.control.checkpoint`), over driven sessions."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TypeVar
from uuid import UUID

import pytest
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.sorting import FlowRunSort

from api import controls
from api.controls import SessionConflict
from api.prefect_reader import PrefectReader
from photoindex.phases import CANCEL_TAG, PAUSE_TAG
from photoindex.settings import Settings
from tests.api.drivable import Driver, index_photos

T = TypeVar("T")


def _with_reader(prefect_api_url: str, act: Callable[[PrefectReader], Awaitable[T]]) -> T:
    async def run() -> T:
        reader = PrefectReader(
            Settings(prefect_api_url=prefect_api_url), cache_ttl_s=0, calibration_sessions=0
        )
        async with reader.connected():
            return await act(reader)

    return asyncio.run(run())


def _read(act: Callable[[PrefectClient], Awaitable[T]]) -> T:
    async def run() -> T:
        async with get_client() as client:
            return await act(client)

    return asyncio.run(run())


def _session(sid: UUID) -> FlowRun:
    return _read(lambda c: c.read_flow_run(sid))


def _embed_run(sid: UUID) -> FlowRun:
    async def read(client: PrefectClient) -> FlowRun:
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

        runs = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[sid])
            ),
            sort=FlowRunSort.START_TIME_ASC,
        )
        return runs[0]

    return _read(read)


def _until(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _paused(sid: UUID) -> bool:
    state = _embed_run(sid).state_type
    return state is not None and state.value == "PAUSED"


def test_a_resume_from_prefects_ui_withdraws_the_pause_request(prefect_api_url: str) -> None:
    """Resuming the paused run in Prefect (not through us) removes the session's pause tag,
    so the next checkpoint does not pause it again; the phase carries on."""
    driver = Driver(images=100, face_items=10)
    sid = driver.start()
    driver.advance("embed", 10)
    action = _with_reader(prefect_api_url, lambda r: controls.pause(r, sid))
    assert action.action == "pause"
    assert PAUSE_TAG in _session(sid).tags
    _until(lambda: _paused(sid), "the embed run to wait Paused")

    embed_id = _embed_run(sid).id
    _read(lambda c: c.resume_flow_run(embed_id))
    _until(lambda: PAUSE_TAG not in _session(sid).tags, "the pause tag to be withdrawn")
    driver.advance("embed", 30)  # the phase is taking commands again
    state = _embed_run(sid).state_type
    assert state is not None and state.value == "RUNNING"
    driver.run_to_end()
    assert driver.outcome == "COMPLETED"


def test_cancel_while_paused_ends_every_run_cancelled(prefect_api_url: str) -> None:
    driver = Driver(images=100, face_items=10)
    sid = driver.start()
    driver.advance("embed", 10)
    _with_reader(prefect_api_url, lambda r: controls.pause(r, sid))
    _until(lambda: _paused(sid), "the embed run to wait Paused")

    action = _with_reader(prefect_api_url, lambda r: controls.cancel(r, sid))
    assert action.message.startswith("Cancel requested")
    tags = _session(sid).tags
    assert CANCEL_TAG in tags and PAUSE_TAG not in tags
    assert driver.ended.wait(30)
    assert driver.outcome == "CANCELLED"
    for run in (_session(sid), _embed_run(sid)):
        assert run.state_type is not None and run.state_type.value == "CANCELLED"

    # An ended session takes no more controls.
    for control in (controls.cancel, controls.pause, controls.resume):
        with pytest.raises(SessionConflict, match="already ended"):
            _with_reader(prefect_api_url, partial(control, session_id=sid))


def _pending_session(tags: list[str]) -> UUID:
    """A session that exists but that no process runs (as after a crash before its start)."""

    async def create(client: PrefectClient) -> UUID:
        run = await client.create_flow_run(
            index_photos, parameters={"folder": "/drivable/nobody"}, tags=tags
        )
        return run.id

    return _read(create)


def test_a_session_nobody_runs_is_cancelled_at_once(prefect_api_url: str) -> None:
    sid = _pending_session([])
    action = _with_reader(prefect_api_url, lambda r: controls.cancel(r, sid))
    assert action.message == "Session cancelled."
    assert action.overall_status == "cancelled"
    state = _session(sid).state_type
    assert state is not None and state.value == "CANCELLED"


def test_a_session_being_cancelled_cannot_be_paused(prefect_api_url: str) -> None:
    sid = _pending_session([CANCEL_TAG])
    with pytest.raises(SessionConflict, match="being cancelled"):
        _with_reader(prefect_api_url, lambda r: controls.pause(r, sid))
    assert PAUSE_TAG not in _session(sid).tags
    _with_reader(prefect_api_url, lambda r: controls.cancel(r, sid))  # leave nothing pending
