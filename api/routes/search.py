"""Search over the indexed photos: by text, or by an indexed photo ("more like this")."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Response
from fastapi.exceptions import RequestValidationError

from api.deps import Search
from api.schemas import (
    MAX_K,
    MAX_PERSON_ID_CHARS,
    MAX_QUERY_CHARS,
    PERSON_ID_PATTERN,
    PHOTO_ID_PATTERN,
    ErrorResponse,
    SearchResponse,
    SearchSort,
    SearchText,
)
from api.search import PersonNotFound, PhotoNotFound, SearchQuery

router = APIRouter(tags=["search"], responses={503: {"model": ErrorResponse}})


def _invalid(name: str, msg: str, given: Any) -> RequestValidationError:
    """A 422 for one query parameter, worded as the app's other validation errors."""
    return RequestValidationError(
        [{"loc": ("query", name), "msg": msg, "type": "value_error", "input": given}]
    )


@router.get(
    "/search",
    summary="Find the photos that best match a text, or that look like a photo",
    description=(
        "Give exactly one of `q` (a text) and `like` (an indexed photo's id). The filters "
        "`minScore`, `after`, `before` and `person` narrow the results; `sort` orders them. "
        "The `Server-Timing` header says where the search's time went, in ms: `encode` "
        "(the CLIP text encoder; 0 when the same text was searched recently, or for `like`), "
        "`open` (opening the vector store; 0 while it is open) and `vectors` (the search)."
    ),
    responses={404: {"model": ErrorResponse, "description": "Unknown `like` photo or person"}},
)
async def search(
    searcher: Search,
    response: Response,
    q: Annotated[
        SearchText | None,
        Query(
            description=f"What to look for: 1..{MAX_QUERY_CHARS} characters, not only spaces, "
            "no control characters",
        ),
    ] = None,
    like: Annotated[
        str | None,
        Query(
            pattern=PHOTO_ID_PATTERN,
            description="Photos that look like this indexed photo (its `photoId`, the SHA-256 "
            "of its content); the photo itself is left out",
        ),
    ] = None,
    k: Annotated[int, Query(ge=1, le=MAX_K, description=f"How many results, 1..{MAX_K}")] = 10,
    min_score: Annotated[
        float | None,
        Query(
            alias="minScore",
            ge=-1.0,
            le=1.0,
            description="Leave out matches whose score (cosine, -1..1) is below this",
        ),
    ] = None,
    after: Annotated[
        datetime | None,
        Query(description="Only photos captured at or after this date or date-time (ISO)"),
    ] = None,
    before: Annotated[
        datetime | None,
        Query(description="Only photos captured before this date or date-time (ISO)"),
    ] = None,
    person: Annotated[
        str | None,
        Query(
            max_length=MAX_PERSON_ID_CHARS,
            pattern=PERSON_ID_PATTERN,
            description="Only photos in which this person (a `personId`) appears",
        ),
    ] = None,
    sort: Annotated[
        SearchSort,
        Query(description="`relevance` (best first), `newest` or `oldest` (by capture time)"),
    ] = "relevance",
) -> SearchResponse:
    """The k photos that best match q (or look like the photo `like`), filtered and sorted."""
    if q is None and like is None:
        raise _invalid("q", "give a text to search for, or `like` with a photo id", None)
    if q is not None and like is not None:
        raise _invalid("like", "give either `q` or `like`, not both", like)
    if after is not None and before is not None and _naive(after) >= _naive(before):
        raise _invalid("before", "must be later than `after`", before.isoformat())
    query = SearchQuery(
        text=q, like=like, k=k, min_score=min_score, after=after, before=before,
        person=person, sort=sort,
    )  # fmt: skip
    try:
        found = await searcher.search(query)
    except (PhotoNotFound, PersonNotFound) as err:
        raise HTTPException(404, str(err)) from err
    response.headers["Server-Timing"] = found.server_timing()
    return SearchResponse(query=q, like=like, k=k, results=found.hits)


def _naive(value: datetime) -> datetime:
    """Capture times are wall-clock times: compare the times as written."""
    return value.replace(tzinfo=None)
