"""The FastAPI application: routers under /api/v1 and JSON errors, never a traceback."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from api.controls import SessionConflict
from api.folders import FolderForbidden, FolderNotFound
from api.prefect_reader import (
    DEFAULT_CACHE_TTL_S,
    PrefectReader,
    PrefectUnavailable,
    SessionNotFound,
)
from api.routes import health, login, pages, persons, photos, progress, search, sessions
from api.schemas import FieldError, ValidationErrorResponse
from api.search import LibraryUnavailable, TextSearch
from api.security import Doors, DoorsMiddleware
from photoindex.launch import prepare as prepare_launch
from photoindex.settings import Settings, get_settings
from tasks.lock import LibraryBusy

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
    LibraryBusy: 409,
    PrefectUnavailable: 503,
    LibraryUnavailable: 503,
}


async def _known_error(_: Request, exc: Exception) -> JSONResponse:
    status = next(code for kind, code in ERROR_STATUS.items() if isinstance(exc, kind))
    return _error(status, str(exc))


_WHERE = {"query": "query parameter", "path": "path parameter", "body": "body field"}
_SHOWN_INPUT_CHARS = 40
"""Inputs longer than this are not repeated in error messages (a 100 kB query stays out)."""


def _field_errors(errors: Sequence[Any]) -> list[FieldError]:
    return [
        FieldError(
            loc=[p for p in e.get("loc", ()) if isinstance(p, str | int)],
            msg=str(e.get("msg", "invalid")).removeprefix("Value error, "),
            type=str(e.get("type", "value_error")),
        )
        for e in errors
        if isinstance(e, dict)
    ]


def _sentence(error: FieldError, raw: dict[str, Any]) -> str:
    if error.type == "json_invalid":
        why = raw.get("ctx", {}).get("error", "")
        return f"the request body is not valid JSON ({why})" if why else error.msg
    given = raw.get("input")
    kind, *names = error.loc or ["request"]
    name = ".".join(str(n) for n in names)
    where = f"{_WHERE.get(str(kind), str(kind))} '{name}'" if name else f"the request {kind}"
    shown = ""
    if isinstance(given, str | int | float) and len(repr(given)) <= _SHOWN_INPUT_CHARS:
        shown = f" (got {given!r})"
    elif isinstance(given, str):
        shown = f" (got {len(given)} characters)"
    return f"{where}: {error.msg}{shown}"


async def _invalid_request(_: Request, exc: Exception) -> JSONResponse:
    """A 422 whose `detail` says in words what is wrong, without echoing large inputs."""
    assert isinstance(exc, RequestValidationError)
    raw = [e for e in exc.errors() if isinstance(e, dict)]
    errors = _field_errors(raw)
    detail = "Invalid request: " + "; ".join(
        _sentence(error, e) for error, e in zip(errors, raw, strict=True)
    )
    body = ValidationErrorResponse(detail=detail, errors=errors)
    return JSONResponse(status_code=422, content=body.model_dump(mode="json"))


def _document_invalid_requests(app: FastAPI) -> None:
    """Make the OpenAPI schema describe our 422 body instead of FastAPI's default one."""
    default = FastAPI.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = default(app)
            components = schema.get("components", {}).get("schemas", {})
            if "HTTPValidationError" in components:
                ours = ValidationErrorResponse.model_json_schema(
                    by_alias=True, ref_template="#/components/schemas/{model}"
                )
                components.update(ours.pop("$defs", {}))
                components["HTTPValidationError"] = ours
                components.pop("ValidationError", None)
        return app.openapi_schema or default(app)

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(
    settings: Settings | None = None,
    reader: PrefectReader | None = None,
    cache_ttl_s: float = DEFAULT_CACHE_TTL_S,
    text_search: TextSearch | None = None,
) -> FastAPI:
    """Build the API; `cache_ttl_s=0` turns the per-session progress cache off."""
    settings = settings or get_settings()
    reader = reader or PrefectReader(settings, cache_ttl_s=cache_ttl_s)
    searcher = text_search or TextSearch(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await reader.start()
        except PrefectUnavailable as err:
            # Serve anyway: progress endpoints answer 503 until Prefect is back.
            logger.warning("starting without Prefect: %s", err)
        # What the first POST would import, imported now, without holding the start-up.
        threading.Thread(target=prepare_launch, name="prepare-launch", daemon=True).start()
        yield
        await reader.aclose()
        searcher.close()

    app = FastAPI(
        title="photoindex API",
        version="1.0.0",
        description="Progress, control and search of photoindex sessions (Prefect flow runs).",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.reader = reader
    app.state.search = searcher
    app.state.doors = Doors.from_settings(settings)
    app.add_middleware(DoorsMiddleware, doors=app.state.doors)
    for module in (progress, sessions, search, persons, photos, health):
        app.include_router(module.router, prefix=API_PREFIX)
    app.include_router(pages.router)
    app.include_router(login.router)
    app.add_api_route(
        "/healthz", health.healthz, include_in_schema=False, response_model=None
    )

    for known in ERROR_STATUS:
        app.add_exception_handler(known, _known_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    _document_invalid_requests(app)

    @app.exception_handler(Exception)
    async def last_resort(request: Request, exc: Exception) -> JSONResponse:
        # The documented last resort: log the traceback here, never send it.
        logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return _error(500, "Internal error; the server log has the details.")

    return app
