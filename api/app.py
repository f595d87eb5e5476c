"""The FastAPI application: routers under /api/v1 and JSON errors, never a traceback."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from api.library import FolderForbidden, FolderNotFound, LibraryUnavailable
from api.prefect_reader import (
    DEFAULT_CACHE_TTL_S,
    PrefectReader,
    PrefectUnavailable,
    SessionConflict,
    SessionNotFound,
)
from api.routes import health, pages, persons, progress, search, sessions
from photoindex.settings import Settings, get_settings

logger = logging.getLogger(__name__)

API_PREFIX = "/api/v1"


def _error(status: int, detail: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": detail})


# What each error of ours means to a client.
ERROR_STATUS: dict[type[Exception], int] = {
    SessionNotFound: 404,
    FolderNotFound: 404,
    FolderForbidden: 403,
    SessionConflict: 409,
    PrefectUnavailable: 503,
    LibraryUnavailable: 503,
}


async def _known_error(_: Request, exc: Exception) -> JSONResponse:
    status = next(code for kind, code in ERROR_STATUS.items() if isinstance(exc, kind))
    return _error(status, str(exc))


def create_app(
    settings: Settings | None = None,
    reader: PrefectReader | None = None,
    cache_ttl_s: float = DEFAULT_CACHE_TTL_S,
) -> FastAPI:
    """Build the API; `cache_ttl_s=0` turns the per-session progress cache off."""
    settings = settings or get_settings()
    reader = reader or PrefectReader(settings, cache_ttl_s=cache_ttl_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await reader.start()
        except PrefectUnavailable as err:
            # Serve anyway: progress endpoints answer 503 until Prefect is back.
            logger.warning("starting without Prefect: %s", err)
        yield
        await reader.aclose()

    app = FastAPI(
        title="photoindex API",
        version="1.0.0",
        description="Progress, control and search of photoindex sessions (Prefect flow runs).",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.reader = reader
    for module in (progress, sessions, search, persons, health):
        app.include_router(module.router, prefix=API_PREFIX)
    app.include_router(pages.router)
    app.add_api_route(
        "/healthz", health.healthz, include_in_schema=False, response_model=None
    )

    for known in ERROR_STATUS:
        app.add_exception_handler(known, _known_error)

    @app.exception_handler(Exception)
    async def last_resort(request: Request, exc: Exception) -> JSONResponse:
        # The documented last resort: log the traceback here, never send it.
        logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return _error(500, "Internal error; the server log has the details.")

    return app
