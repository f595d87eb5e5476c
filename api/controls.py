"""Pause, resume and cancel a session: tags and states on its Prefect runs.

The flows read the tags at their checkpoints (`tasks.control`): a pause tag makes the
running phase wait in Prefect's Paused state, a cancel tag makes it stop and end
Cancelled. A session that nobody runs any more (stalled, pending or failed) is set
Cancelled here at once, since no checkpoint is left to do it.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Literal
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import FlowRun, State, StateType
from prefect.states import Cancelled, Cancelling

from api.prefect_reader import PrefectReader
from api.progress import FINAL_STATES, compute_progress
from api.schemas import SessionAction, UnifiedProgressResponse
from photoindex.phases import CANCEL_TAG, PAUSE_TAG


class SessionConflict(Exception):
    """The request does not fit the session's state (e.g. cancelling a finished session)."""


async def pause(reader: PrefectReader, session_id: UUID) -> SessionAction:
    """Ask the session to pause at its next checkpoint."""
    parent, _, _ = await _live(reader, session_id, "pause")
    if CANCEL_TAG in parent.tags:
        raise SessionConflict(f"Cannot pause session {session_id}: it is being cancelled.")
    await _set_tags(reader, parent, add={PAUSE_TAG}, remove=set())
    return await _after(
        reader, session_id, "pause", "Pause requested: the session pauses at its next checkpoint."
    )


async def resume(reader: PrefectReader, session_id: UUID) -> SessionAction:
    """Withdraw a pause request and resume any paused run of the session."""
    parent, children, _ = await _live(reader, session_id, "resume")
    await _set_tags(reader, parent, add=set(), remove={PAUSE_TAG})
    for run in (parent, *children):
        if run.state_type == StateType.PAUSED:
            await reader.call(partial(PrefectClient.resume_flow_run, flow_run_id=run.id))
    return await _after(reader, session_id, "resume", "Session resumed.")


async def cancel(reader: PrefectReader, session_id: UUID) -> SessionAction:
    """Cancel the session: its runs stop at their next checkpoint and end Cancelled."""
    parent, children, progress = await _live(reader, session_id, "cancel")
    await _set_tags(reader, parent, add={CANCEL_TAG}, remove={PAUSE_TAG})
    # Nobody is left to finish the cancellation of a silent or not yet started session.
    force = progress.overall_status in {"stalled", "pending", "failed"}
    message = "Cancelled at the user's request"
    for run in (parent, *children):
        if run.state_type is None or run.state_type.value in FINAL_STATES:
            continue
        state: State[Any] = Cancelled(message=message) if force else Cancelling(message=message)
        await reader.call(
            partial(PrefectClient.set_flow_run_state, flow_run_id=run.id, state=state, force=force)
        )
    return await _after(
        reader,
        session_id,
        "cancel",
        "Session cancelled." if force else "Cancel requested: the session stops at its "
        "next checkpoint.",
    )


async def _live(
    reader: PrefectReader, session_id: UUID, verb: str
) -> tuple[FlowRun, list[FlowRun], UnifiedProgressResponse]:
    """The session's runs, fresh, and its progress; a session that has ended is a conflict."""
    reader.invalidate(session_id)
    snap, weights, raw = await reader.snapshot(session_id)
    progress = compute_progress(snap, weights)
    if raw.parent.state_type is not None and raw.parent.state_type.value in FINAL_STATES:
        raise SessionConflict(
            f"Cannot {verb} session {session_id}: it has already ended "
            f"({progress.overall_status})."
        )
    return raw.parent, list(raw.children.values()), progress


async def _set_tags(reader: PrefectReader, run: FlowRun, add: set[str], remove: set[str]) -> None:
    tags = [t for t in run.tags if t not in remove] + sorted(add - set(run.tags))
    await reader.call(lambda c: c.update_flow_run(run.id, tags=tags))


async def _after(
    reader: PrefectReader,
    session_id: UUID,
    action: Literal["cancel", "pause", "resume"],
    message: str,
) -> SessionAction:
    reader.invalidate(session_id)
    progress = await reader.unified(session_id)
    return SessionAction(
        session_id=session_id,
        action=action,
        overall_status=progress.overall_status,
        message=message,
    )
