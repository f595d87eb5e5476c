"""Sessions: list, start, cancel, pause and resume."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Path, Query, status

from api import controls
from api.deps import AppSettings, Launcher, Reader
from api.folders import library_folder
from api.schemas import ErrorResponse, SessionAction, SessionCreate, SessionCreated, SessionList

router = APIRouter(
    prefix="/training/sessions",
    tags=["sessions"],
    responses={503: {"model": ErrorResponse}},
)
SessionId = Annotated[UUID, Path(alias="sessionId", description="The session's flow-run UUID")]
_CONTROL_ERRORS: dict[int | str, dict[str, object]] = {
    404: {"model": ErrorResponse},
    409: {"model": ErrorResponse},
}


@router.get("", summary="List recent sessions, newest first")
async def list_sessions(
    reader: Reader, limit: Annotated[int, Query(ge=1, le=200)] = 20
) -> SessionList:
    """Recent sessions; future scheduled runs are left out."""
    return SessionList(sessions=await reader.list_sessions(limit))


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    summary="Start indexing a folder",
    responses={
        400: {"model": ErrorResponse, "description": "The body cannot be read (not UTF-8)"},
        403: {"model": ErrorResponse, "description": "Folder outside the library roots"},
        404: {"model": ErrorResponse, "description": "Folder not found"},
        409: {"model": ErrorResponse, "description": "A session is indexing into the data folder"},
    },
)
async def create_session(
    body: SessionCreate, settings: AppSettings, launch: Launcher
) -> SessionCreated:
    """Start a session for a folder under a configured library root."""
    folder = library_folder(body.folder, settings)
    session_id = await launch(folder, not body.skip_face_detection)
    return SessionCreated(
        session_id=session_id,
        folder=str(folder),
        skip_face_detection=body.skip_face_detection,
        progress_url=f"/api/v1/training/sessions/{session_id}/progress-unified",
    )


@router.post("/{sessionId}/cancel", summary="Cancel a session", responses=_CONTROL_ERRORS)
async def cancel_session(session_id: SessionId, reader: Reader) -> SessionAction:
    """Cancel a session; it stops at its next checkpoint."""
    return await controls.cancel(reader, session_id)


@router.post("/{sessionId}/pause", summary="Pause a session", responses=_CONTROL_ERRORS)
async def pause_session(session_id: SessionId, reader: Reader) -> SessionAction:
    """Pause a session at its next checkpoint, in Prefect's Paused state."""
    return await controls.pause(reader, session_id)


@router.post("/{sessionId}/resume", summary="Resume a paused session", responses=_CONTROL_ERRORS)
async def resume_session(session_id: SessionId, reader: Reader) -> SessionAction:
    """Resume a paused session where it stopped."""
    return await controls.resume(reader, session_id)
