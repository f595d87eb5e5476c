"""The local Prefect server's retry of writes SQLite refused, on an app whose errors go
through Prefect's own exception handler (the one that turns a locked database into 503)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from typing import Any

import httpx
import pytest
import sqlalchemy.exc
from fastapi import FastAPI, Request
from prefect.server.api.server import custom_internal_exception_handler

from photoindex.prefect_app import RETRIED, RetryRefusedWrites


def refusing_app(refusals: int, error: str = "database is locked") -> tuple[FastAPI, list[Any]]:
    """A write endpoint SQLite refuses `refusals` times, then echoes the body it was sent;
    the list records the body of every call."""
    app = FastAPI(exception_handlers={Exception: custom_internal_exception_handler})
    calls: list[Any] = []

    @app.post("/api/task_runs/")
    async def create(request: Request) -> Any:
        body = await request.json()
        calls.append(body)
        if len(calls) <= refusals:
            raise sqlalchemy.exc.OperationalError("INSERT", {}, sqlite3.OperationalError(error))
        return {"created": body}

    @app.get("/api/health")
    async def health() -> Any:
        calls.append(None)
        raise sqlalchemy.exc.OperationalError("SELECT", {}, sqlite3.OperationalError(error))

    return app, calls


def send(app: FastAPI, method: str, path: str, delays_s: tuple[float, ...]) -> httpx.Response:
    wrapped = RetryRefusedWrites(app, delays_s=delays_s)
    transport = httpx.ASGITransport(app=wrapped, raise_app_exceptions=False)

    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=transport, base_url="http://prefect") as client:
            body = {"name": "batch", "dynamic_key": "7"} if method == "POST" else None
            return await client.request(method, path, json=body)

    return asyncio.run(go())


def retried_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if RETRIED in r.getMessage()]


def test_a_write_refused_twice_succeeds_on_the_third_try_with_the_same_body(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="photoindex.prefect_app")
    app, calls = refusing_app(refusals=2)
    response = send(app, "POST", "/api/task_runs/", delays_s=(0.0, 0.0, 0.0))
    assert response.status_code == 200
    assert response.json() == {"created": {"name": "batch", "dynamic_key": "7"}}
    assert calls == [{"name": "batch", "dynamic_key": "7"}] * 3
    [(level, line)] = retried_lines(caplog)  # one line in the server's log, counted by benches
    assert level == logging.INFO
    assert "POST /api/task_runs/" in line and "refused 2 times, done on try 3" in line


def test_a_write_that_succeeds_at_once_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="photoindex.prefect_app")
    app, calls = refusing_app(refusals=0)
    assert send(app, "POST", "/api/task_runs/", delays_s=(0.0,)).status_code == 200
    assert len(calls) == 1
    assert retried_lines(caplog) == []


def test_a_write_refused_at_every_try_reaches_the_client_as_prefects_503(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="photoindex.prefect_app")
    app, calls = refusing_app(refusals=10)
    response = send(app, "POST", "/api/task_runs/", delays_s=(0.0, 0.0))
    assert response.status_code == 503
    assert response.json() == {"exception_message": "Service Unavailable"}
    assert len(calls) == 3  # the first try and one after each delay
    [(level, line)] = retried_lines(caplog)
    assert level == logging.WARNING and "refused 3 times" in line


def test_a_read_answered_503_is_not_retried_by_the_server() -> None:
    app, calls = refusing_app(refusals=10)
    response = send(app, "GET", "/api/health", delays_s=(0.0, 0.0))
    assert response.status_code == 503
    assert len(calls) == 1


def test_an_error_that_is_not_a_refusal_is_not_retried() -> None:
    app, calls = refusing_app(refusals=10, error="no such table: task_run")
    response = send(app, "POST", "/api/task_runs/", delays_s=(0.0, 0.0))
    assert response.status_code == 500
    assert len(calls) == 1
