"""Text search over the indexed photos."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import Search
from api.schemas import ErrorResponse, SearchResponse

router = APIRouter(tags=["search"], responses={503: {"model": ErrorResponse}})


@router.get("/search", summary="Find the photos that best match a text")
async def search(
    searcher: Search,
    q: Annotated[str, Query(min_length=1, max_length=500, description="What to look for")],
    k: Annotated[int, Query(ge=1, le=100, description="How many results")] = 10,
) -> SearchResponse:
    """The k photos that best match q."""
    return SearchResponse(query=q, k=k, results=await searcher.search(q, k))
