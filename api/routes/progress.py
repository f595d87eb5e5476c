"""Progress of one session: unified, training-only (legacy) and the face phases."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Path

from api.deps import Reader
from api.schemas import (
    ErrorResponse,
    FaceSessionResponse,
    TrainingProgressResponse,
    UnifiedProgressResponse,
)

router = APIRouter(
    tags=["progress"],
    responses={404: {"model": ErrorResponse}, 503: {"model": ErrorResponse}},
)
SessionId = Annotated[UUID, Path(alias="sessionId", description="The session's flow-run UUID")]


@router.get(
    "/training/sessions/{sessionId}/progress-unified",
    summary="Get unified progress across all training phases",
    description=(
        "Combined progress of training (CLIP embeddings), face detection and clustering, "
        "weighted by the session's fixed weights (seed 30/65/5 until calibrated)."
    ),
)
async def get_unified_progress(session_id: SessionId, reader: Reader) -> UnifiedProgressResponse:
    """Unified progress of a session."""
    return await reader.unified(session_id)


@router.get(
    "/training/sessions/{sessionId}/progress",
    summary="Get training (phase 1) progress only",
    description="The older phase-1-only progress, kept for compatibility.",
)
async def get_training_progress(
    session_id: SessionId, reader: Reader
) -> TrainingProgressResponse:
    """Training-phase progress of a session."""
    return await reader.training(session_id)


@router.get(
    "/face-sessions/{sessionId}",
    summary="Get face detection and clustering of a session",
)
async def get_face_session(session_id: SessionId, reader: Reader) -> FaceSessionResponse:
    """The face phases of a session, combined."""
    return await reader.face_session(session_id)
