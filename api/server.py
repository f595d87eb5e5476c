"""Run the API under uvicorn with limits a slow or hostile client cannot exhaust: a cap on
open connections, a deadline for a request's headers, a keep-alive timeout and a header size."""

from __future__ import annotations

import asyncio
import logging

import h11
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from photoindex.settings import Settings

logger = logging.getLogger(__name__)


def guarded_protocol(max_connections: int, header_timeout_s: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol, closing connections beyond `max_connections` at once and any
    connection whose request headers have not arrived within `header_timeout_s`.

    uvicorn's own `limit_concurrency` only acts once headers are complete, and its
    keep-alive timer only after a first response, so neither stops idle half-open
    connections from using up the file descriptors.
    """

    class GuardedH11Protocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                logger.warning("more than %d connections: closing a new one", max_connections)
                transport.close()
                return
            self._arm_header_timer()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:  # the headers are in
                self._disarm_header_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.conn.their_state is h11.IDLE:  # waiting for the next request's headers
                self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_header_timer()
            super().connection_lost(exc)

        def _arm_header_timer(self) -> None:
            self._disarm_header_timer()
            self._header_timer = self.loop.call_later(header_timeout_s, self._headers_late)

        def _disarm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_late(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    return GuardedH11Protocol


def server_config(app: FastAPI, settings: Settings, host: str, port: int) -> uvicorn.Config:
    """uvicorn's configuration for the API, with the limits of `settings`."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        http=guarded_protocol(settings.api_max_connections, settings.api_header_timeout_s),
        timeout_keep_alive=settings.api_keep_alive_s,
        h11_max_incomplete_event_size=settings.api_max_header_bytes,
    )
