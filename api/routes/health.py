"""Liveness of the API and of the Prefect server behind it."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import Reader
from api.schemas import ErrorResponse, Health

router = APIRouter(tags=["health"], responses={503: {"model": ErrorResponse}})


@router.get("/healthz", summary="Check the API and its Prefect server")
async def healthz(reader: Reader) -> Health:
    """OK when the Prefect API answers; 503 otherwise."""
    await reader.healthcheck()
    return Health(status="ok", prefect="ok", prefect_api_url=reader.api_url)
