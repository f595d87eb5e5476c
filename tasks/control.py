"""Pause and cancel between batches: the flows' side of the API's session controls.

The API asks by tagging the session (the `index-photos` parent run): `PAUSE_TAG` to
pause, `CANCEL_TAG` plus a Cancelling state to cancel. A running phase calls
`checkpoint()` between batches. On a pause request the calling flow run waits in
Prefect's Paused state until the tag is removed (or the run is resumed in Prefect),
then carries on where it stopped. On a cancel request the calling runs are set to
Cancelled and `SessionCancelled` ends the process's flow runs at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any
from uuid import UUID, uuid4

import httpx
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.responses import OrchestrationResult
from prefect.context import FlowRunContext, TaskRunContext
from prefect.exceptions import Abort
from prefect.states import Cancelled, Paused, Running

from photoindex.phases import CANCEL_TAG, PAUSE_TAG

logger = logging.getLogger(__name__)

CHECK_INTERVAL_S = 1.0
PAUSE_POLL_S = 0.5

_CANCEL_STATES = {StateType.CANCELLING, StateType.CANCELLED}
_last_check: dict[UUID, float] = {}
_sessions: dict[UUID, UUID] = {}
_lock = threading.Lock()
_current_session: ContextVar[UUID | None] = ContextVar("photoindex_session", default=None)


class SessionCancelled(Abort):
    """The session was cancelled: its runs are already Cancelled, so the engine keeps them so."""


@contextmanager
def in_session(session_id: str | None) -> Iterator[None]:
    """The flow runs started in this block belong to the session `session_id` (the
    `index-photos` run): their checkpoints know it without asking Prefect."""
    token = _current_session.set(None if session_id is None else UUID(session_id))
    try:
        yield
    finally:
        _current_session.reset(token)


def checkpoint() -> None:
    """Between batches: wait while the session is paused, raise if it was cancelled."""
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return
    run_id = context.flow_run.id
    now = time.monotonic()
    with _lock:
        last = _last_check.get(run_id)
        if last is not None and now - last < CHECK_INTERVAL_S:
            return
        _last_check[run_id] = now
        if len(_last_check) > 1024:
            _last_check.clear()
    try:
        with get_client(sync_client=True) as client:
            session_id = _session_id(client, context.flow_run)
            _check(client, run_id, session_id)
    except httpx.HTTPError as err:
        # A checkpoint that cannot reach Prefect must not stop the indexing.
        logger.warning("checkpoint skipped: Prefect API unreachable (%s)", err)


def _session_id(client: SyncPrefectClient, flow_run: FlowRun) -> UUID:
    """The outermost flow run above this one: the session."""
    known = _current_session.get()
    if known is not None:
        return known
    cached = _sessions.get(flow_run.id)
    if cached is not None:
        return cached
    current = flow_run
    while current.parent_task_run_id is not None:
        parent_task = client.read_task_run(current.parent_task_run_id)
        if parent_task.flow_run_id is None:
            break
        current = client.read_flow_run(parent_task.flow_run_id)
    _sessions[flow_run.id] = current.id
    return current.id


def _runs(client: SyncPrefectClient, run_id: UUID, session_id: UUID) -> tuple[FlowRun, FlowRun]:
    session = client.read_flow_run(session_id)
    own = session if session_id == run_id else client.read_flow_run(run_id)
    return session, own


def _cancel_requested(session: FlowRun, own: FlowRun) -> bool:
    return (
        CANCEL_TAG in session.tags
        or session.state_type in _CANCEL_STATES
        or own.state_type in _CANCEL_STATES
    )


def _check(client: SyncPrefectClient, run_id: UUID, session_id: UUID) -> None:
    session, own = _runs(client, run_id, session_id)
    if _cancel_requested(session, own):
        _cancel(client, run_id, session_id)
    if PAUSE_TAG in session.tags:
        _wait_paused(client, run_id, session_id)


def _wait_paused(client: SyncPrefectClient, run_id: UUID, session_id: UUID) -> None:
    """Hold this run in Prefect's Paused state until the pause request is withdrawn."""
    result: OrchestrationResult[Any] = client.set_flow_run_state(
        run_id,
        Paused(pause_key=f"photoindex-{uuid4().hex}", message="Paused at the user's request"),
    )
    if result.state is None or result.state.type != StateType.PAUSED:
        logger.warning("pause refused by Prefect: %s", result.details)
        return
    logger.info("session %s paused; waiting to be resumed", session_id)
    while True:
        time.sleep(PAUSE_POLL_S)
        session, own = _runs(client, run_id, session_id)
        if _cancel_requested(session, own):
            _cancel(client, run_id, session_id)
        if own.state_type == StateType.RUNNING:
            # Resumed from outside (the API or Prefect's UI): withdraw the request too.
            if PAUSE_TAG in session.tags:
                client.update_flow_run(
                    session_id, tags=[t for t in session.tags if t != PAUSE_TAG]
                )
            break
        if PAUSE_TAG not in session.tags:
            client.set_flow_run_state(run_id, Running(message="Resumed at the user's request"))
            break
    logger.info("session %s resumed", session_id)


def _cancel(client: SyncPrefectClient, run_id: UUID, session_id: UUID) -> None:
    """Mark the calling task run and flow runs Cancelled, then end them."""
    message = "Cancelled at the user's request"
    task_context = TaskRunContext.get()
    if task_context is not None:
        client.set_task_run_state(task_context.task_run.id, Cancelled(message=message), force=True)
    for flow_run_id in dict.fromkeys((run_id, session_id)):
        client.set_flow_run_state(flow_run_id, Cancelled(message=message), force=True)
    logger.info("session %s cancelled", session_id)
    raise SessionCancelled(message)
