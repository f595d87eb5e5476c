"""The web pages: recent sessions and a live page per session, as plain static files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

router = APIRouter(include_in_schema=False)
router.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


@router.get("/", response_class=FileResponse)
async def sessions_page() -> FileResponse:
    """The list of recent sessions."""
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


@router.get("/phases.js")
async def phase_table() -> Response:
    """The phase table, as the page's script reads it."""
    from photoindex.phases import page_script

    return Response(page_script(), media_type="text/javascript")


@router.get("/sessions/{session_id}", response_class=FileResponse)
async def session_page(
    session_id: Annotated[UUID, PathParam(description="The session's flow-run UUID")],
) -> FileResponse:
    """The live progress page of one session; its script reads the id from the URL."""
    return FileResponse(STATIC_DIR / "session.html", media_type="text/html")
