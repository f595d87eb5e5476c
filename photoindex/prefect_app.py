"""The local Prefect server's process: Prefect's own server app, retrying refused writes.

Prefect's SQLite backend answers 503 when a write cannot take the database. Most of its
writes read first in a deferred transaction (`create_task_run` reads labels, then
inserts): if another connection is writing at that moment, SQLite refuses the upgrade at
once (`SQLITE_BUSY`: it does not wait there, or two could deadlock), and if another one
wrote since the read, `SQLITE_BUSY_SNAPSHOT`. Measured under three concurrent writers:
40 and 11 of them. The transaction was rolled back and the same request succeeds moments
later, but Prefect's client waits `2 ** try` seconds first (no `Retry-After`): 2 s, on
sessions that take 4. This server runs such a request again itself after a few tens of
milliseconds, and passes the 503 on only when every try was refused. Each write retried
here is one line in the server's log (`server.log` in the Prefect home), saying how many
tries it took.

Run by `photoindex.prefect_server.ensure_prefect_api` as
`python -m photoindex.prefect_app --host HOST --port PORT`; it serves what
`prefect server start --host HOST --port PORT` serves (API, UI and services).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import sys
import time
from collections.abc import Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Short and many: under load the next writer often holds the lock again at a retry.
RETRY_DELAYS_S = (0.005, 0.01, 0.02, 0.04) + (0.08,) * 24  # 2.0-4.1 s in all, with jitter
#: What each log line of a write retried here says (benchmarks count them in the server's log).
RETRIED = "a write SQLite refused, retried in the server"
logger = logging.getLogger(__name__)

_WRITES = {"POST", "PUT", "PATCH", "DELETE"}
_MAX_BODY = 1 << 20  # a larger body streams through untouched (Prefect's writes are small)


class RetryRefusedWrites:
    """ASGI middleware: a write the app answers with 503 runs again after each of
    `delays_s` (each with up to as much again of jitter); other requests pass through."""

    def __init__(self, app: ASGIApp, delays_s: Sequence[float] = RETRY_DELAYS_S) -> None:
        self.app = app
        self.delays_s = tuple(delays_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _WRITES:
            await self.app(scope, receive, send)
            return
        more, messages = await _read_body(receive)
        if more:  # too large to hold: no retry
            await self.app(scope, _replay(messages, receive), send)
            return
        started = time.monotonic()
        for refused, delay_s in enumerate(self.delays_s):
            if not await self._try(_fresh(scope), _replay(messages, receive), send, hold=True):
                if refused:
                    logger.info(
                        "%s %s: %s, refused %d times, done on try %d after %.0f ms",
                        scope["method"], scope["path"], RETRIED, refused, refused + 1,
                        1000 * (time.monotonic() - started),
                    )  # fmt: skip
                return
            await asyncio.sleep(delay_s * (1 + random.random()))
        logger.warning(
            "%s %s: %s, refused %d times in %.1f s: the client retries it",
            scope["method"], scope["path"], RETRIED, len(self.delays_s) + 1,
            time.monotonic() - started,
        )  # fmt: skip
        await self._try(_fresh(scope), _replay(messages, receive), send, hold=False)

    async def _try(self, scope: Scope, receive: Receive, send: Send, hold: bool) -> bool:
        """Run the app once; True if it answered 503 and `hold` kept that answer back."""
        refused = False

        async def hold_503(message: Message) -> None:
            nonlocal refused
            if hold and message["type"] == "http.response.start" and message["status"] == 503:
                refused = True
            if not refused:
                await send(message)

        try:
            await self.app(scope, receive, hold_503)
        except Exception:
            # Starlette raises the error again after its handler's 503 went out (so that
            # the server logs it); a 503 held back for a retry is all it said.
            if not refused:
                raise
        return refused


def _fresh(scope: Scope) -> Scope:
    """A copy of the request's scope for one try: routing writes into the one it is given."""
    fresh = dict(scope)
    if isinstance(scope.get("state"), dict):
        fresh["state"] = dict(scope["state"])
    return fresh


async def _read_body(receive: Receive) -> tuple[bool, list[Message]]:
    """Whether the body goes on past `_MAX_BODY` bytes, and its messages read so far."""
    messages: list[Message] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return False, messages
        size += len(message.get("body", b""))
        if not message.get("more_body", False):
            return False, messages
        if size > _MAX_BODY:
            return True, messages


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A `receive` that gives the held body messages again, then the real ones."""
    queue = list(messages)

    async def replay() -> Message:
        return queue.pop(0) if queue else await receive()

    return replay


def main() -> None:
    """Serve Prefect's API, UI and services on HOST:PORT, as `prefect server start` does."""
    from prefect.settings import (
        PREFECT_SERVER_API_HOST,
        PREFECT_SERVER_API_KEEPALIVE_TIMEOUT,
        PREFECT_SERVER_API_PORT,
        PREFECT_SERVER_API_WEBSOCKET_PING_INTERVAL,
        PREFECT_SERVER_API_WEBSOCKET_PING_TIMEOUT,
        PREFECT_SERVER_LOGGING_LEVEL,
    )

    parser = argparse.ArgumentParser(
        prog="python -m photoindex.prefect_app", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--host", default=PREFECT_SERVER_API_HOST.value(), help="default: %(default)s"
    )
    parser.add_argument(
        "--port", type=int, default=PREFECT_SERVER_API_PORT.value(), help="default: %(default)s"
    )
    args = parser.parse_args()

    import uvicorn
    from prefect.logging.configuration import setup_logging
    from prefect.server.api.server import create_app

    setup_logging()
    # Each retried write is one line in the server's log, whatever level Prefect logs at.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    uvicorn.run(
        RetryRefusedWrites(create_app(final=True)),
        host=args.host,
        port=args.port,
        timeout_keep_alive=PREFECT_SERVER_API_KEEPALIVE_TIMEOUT.value(),
        ws_ping_interval=PREFECT_SERVER_API_WEBSOCKET_PING_INTERVAL.value(),
        ws_ping_timeout=PREFECT_SERVER_API_WEBSOCKET_PING_TIMEOUT.value(),
        log_level=PREFECT_SERVER_LOGGING_LEVEL.value().lower(),
    )


if __name__ == "__main__":
    main()
