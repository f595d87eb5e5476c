"""Indexed photos: a small cached JPEG of each, for result grids."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path
from fastapi.responses import FileResponse

from api.deps import Photos
from api.schemas import PHOTO_ID_PATTERN, ErrorResponse

router = APIRouter(tags=["photos"], responses={503: {"model": ErrorResponse}})


@router.get(
    "/photos/{photoId}/thumbnail",
    summary="A small JPEG of an indexed photo",
    description="At most 320 px on the long side, upright, made on first request and cached "
    "in the data folder. Only photos the catalog lists as indexed are served, by their id; "
    "never a file by its path.",
    response_class=FileResponse,
    responses={
        200: {"content": {"image/jpeg": {}}, "description": "The thumbnail"},
        404: {"model": ErrorResponse},
    },
)
async def thumbnail(
    photos: Photos,
    photo_id: Annotated[
        str,
        Path(
            alias="photoId",
            pattern=PHOTO_ID_PATTERN,
            description="The photo's id: the SHA-256 of its content, 64 lowercase hex digits",
        ),
    ],
) -> FileResponse:
    """Serve an indexed photo's thumbnail."""
    path = await photos.thumbnail(photo_id)
    if path is None:
        raise HTTPException(404, "Photo not found")
    return FileResponse(
        path, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"}
    )
