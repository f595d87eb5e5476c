"""The API's doors, checked before any route runs: the Host header (DNS rebinding), the
origin of state-changing requests (cross-site requests), the token of a bind beyond
loopback, and the size of request bodies."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from fastapi import HTTPException
from starlette.datastructures import Headers
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from photoindex.settings import Settings

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_BINDS = frozenset({"0.0.0.0", "::", ""})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
COOKIE = "photoindex_session"
LOGIN_PATH = "/login"
#: Reachable without the token: liveness, and what the login page needs.
OPEN_PATHS = frozenset({"/healthz", LOGIN_PATH, "/static/login.js", "/static/style.css"})


def is_loopback(host: str) -> bool:
    """Whether a host name or address stays on this machine."""
    name = host.strip("[]").rstrip(".").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The host of a Host header or an origin's netloc, without port, lower case."""
    header = header.strip().lower()
    if header.startswith("["):  # [::1]:8000
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0].rstrip(".") if header.count(":") <= 1 else header


def cookie_value(token: str) -> str:
    """What the login cookie holds: a keyed digest of the token, never the token."""
    return hmac.new(token.encode(), b"photoindex-session", hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Doors:
    """Who may come in, computed once from the settings."""

    hosts: frozenset[str] | None  # None: any Host (a wildcard bind, guarded by the token)
    token: str | None
    max_body_bytes: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Doors:
        bind = settings.api_host.strip("[]").lower()
        extra = {host_name(h) for h in settings.api_allowed_hosts}
        hosts: frozenset[str] | None
        if bind in WILDCARD_BINDS and not extra:
            hosts = None
        else:
            hosts = frozenset(LOOPBACK_NAMES | extra | ({bind} - WILDCARD_BINDS))
        token = settings.api_token.get_secret_value() if settings.api_token else None
        return cls(hosts=hosts, token=token, max_body_bytes=settings.api_max_body_bytes)

    def host_allowed(self, header: str | None) -> bool:
        if not header:
            return False
        name = host_name(header)
        return self.hosts is None or name in self.hosts or is_loopback(name)

    def authorized(self, headers: Headers) -> bool:
        if self.token is None:
            return True
        scheme, _, given = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip(), self.token):
            return True
        cookie = _cookie(headers.get("cookie", ""), COOKIE)
        return cookie is not None and hmac.compare_digest(cookie, cookie_value(self.token))

    def token_matches(self, given: str) -> bool:
        return self.token is not None and hmac.compare_digest(given, self.token)


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


def _foreign_origin(headers: Headers) -> str | None:
    """Why a state-changing request comes from another site's page, or None if it does not."""
    site = headers.get("sec-fetch-site")
    if site in ("cross-site", "same-site"):
        return f"Sec-Fetch-Site is {site}"
    origin = headers.get("origin")
    if origin is None:
        return None  # not a browser, or a same-origin navigation of an old browser
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return f"Origin {origin!r} is not a web page of this API"
    if parts.netloc.lower() != headers.get("host", "").lower():
        return f"Origin {origin} is not this API's origin"
    return None


def _refuse(status: int, detail: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(status_code=status, content={"detail": detail}, headers=headers)


class DoorsMiddleware:
    """Refuse, before any route runs: a foreign Host (400), a state-changing request from
    another site's page (403), a request without the token when one is set (401, or the
    login page for a browser), and a body over the limit (413)."""

    def __init__(self, app: ASGIApp, doors: Doors) -> None:
        self.app = app
        self.doors = doors

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self.app(scope, self._limited(receive), send)

    def _refusal(self, scope: Scope) -> Response | None:
        headers = Headers(scope=scope)
        doors = self.doors
        if not doors.host_allowed(headers.get("host")):
            shown = (headers.get("host") or "")[:100]
            return _refuse(
                400,
                f"Host {shown!r} is not a name this API answers to; use 127.0.0.1 or localhost, "
                "or list it in PHOTOINDEX_API_ALLOWED_HOSTS.",
            )
        method = scope.get("method", "GET")
        if method not in SAFE_METHODS:
            why = _foreign_origin(headers)
            if why is not None:
                return _refuse(403, f"Cross-site request refused: {why}.")
        path = scope.get("path", "/")
        if path not in OPEN_PATHS and not doors.authorized(headers):
            if method == "GET" and "text/html" in headers.get("accept", ""):
                return RedirectResponse(f"{LOGIN_PATH}?next={quote(path)}", status_code=303)
            return _refuse(
                401,
                "This API needs its token: send 'Authorization: Bearer <PHOTOINDEX_API_TOKEN>', "
                f"or log in at {LOGIN_PATH}.",
                {"WWW-Authenticate": "Bearer"},
            )
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > doors.max_body_bytes):
            return _refuse(413, self._too_large())
        return None

    def _too_large(self) -> str:
        return f"The request body is larger than {self.doors.max_body_bytes} bytes."

    def _limited(self, receive: Receive) -> Receive:
        """`receive`, stopping a body (sent without Content-Length) once it passes the limit."""
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.doors.max_body_bytes:
                    raise HTTPException(413, self._too_large())
            return message

        return limited
