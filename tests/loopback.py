"""The base URL of in-process API clients (the API answers only loopback Host names:
TestClient's default, `testserver`, gets 400 like any DNS-rebound name), and the API
served by uvicorn in a thread on a free loopback port."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI

LOOPBACK = "http://127.0.0.1"


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def served_in_thread(
    app: FastAPI, config: Callable[[FastAPI, int], uvicorn.Config] | None = None
) -> Iterator[tuple[int, uvicorn.Server]]:
    """Serve `app` on a free loopback port until the block ends; yields the port and server.

    By default as `photoindex serve` serves it (`api.server.server_config`: its own HTTP
    protocol and limits, not whichever parser uvicorn would pick, such as httptools, which
    answers a 100 KB URL with a bare 400 before the app sees it)."""
    from api.server import server_config

    port = free_port()
    made = (
        config(app, port)
        if config is not None
        else server_config(app, app.state.settings, "127.0.0.1", port)
    )
    server = uvicorn.Server(made)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield port, server
    finally:
        server.should_exit = True
        thread.join(10)
