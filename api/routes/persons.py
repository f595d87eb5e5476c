"""Persons (face clusters) and face crops."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query
from fastapi.responses import FileResponse

from api.deps import Persons
from api.schemas import FACE_ID_PATTERN, MAX_FACE_ID_CHARS, ErrorResponse, PersonList

router = APIRouter(tags=["persons"], responses={503: {"model": ErrorResponse}})


@router.get("/persons", summary="List persons, largest first")
async def list_persons(
    persons: Persons,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    samples: Annotated[int, Query(ge=0, le=20)] = 3,
) -> PersonList:
    """Persons with face counts and sample crops."""
    return PersonList(persons=await persons.persons(limit, samples))


@router.get(
    "/faces/{faceId}/crop",
    summary="The JPEG crop of a face",
    response_class=FileResponse,
    responses={
        200: {"content": {"image/jpeg": {}}, "description": "The crop"},
        404: {"model": ErrorResponse},
    },
)
async def face_crop(
    persons: Persons,
    face_id: Annotated[
        str,
        Path(
            alias="faceId",
            max_length=MAX_FACE_ID_CHARS,
            pattern=FACE_ID_PATTERN,
            description="The face's id: letters, digits, '-' and '_' only",
        ),
    ],
) -> FileResponse:
    """Serve a face crop; only files inside the data folder's crops are served."""
    path = await persons.crop(face_id)
    if path is None:
        raise HTTPException(404, "Face crop not found")
    return FileResponse(path, media_type="image/jpeg")
