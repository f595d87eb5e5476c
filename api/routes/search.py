"""Text search over the indexed photos."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from api.deps import Search
from api.schemas import MAX_K, MAX_QUERY_CHARS, ErrorResponse, SearchResponse, SearchText

router = APIRouter(tags=["search"], responses={503: {"model": ErrorResponse}})


@router.get(
    "/search",
    summary="Find the photos that best match a text",
    description=(
        "The `Server-Timing` header says where the search's time went, in ms: `encode` "
        "(the CLIP text encoder; 0 when the same text was searched recently), `open` "
        "(opening the vector store; 0 while it is open) and `vectors` (the vector search)."
    ),
)
async def search(
    searcher: Search,
    response: Response,
    q: Annotated[
        SearchText,
        Query(
            description=f"What to look for: 1..{MAX_QUERY_CHARS} characters, not only spaces, "
            "no control characters",
        ),
    ],
    k: Annotated[int, Query(ge=1, le=MAX_K, description=f"How many results, 1..{MAX_K}")] = 10,
) -> SearchResponse:
    """The k photos that best match q."""
    found = await searcher.search(q, k)
    response.headers["Server-Timing"] = found.server_timing()
    return SearchResponse(query=q, k=k, results=found.hits)
