"""The API attacked as the review did: a cross-origin cancel, a DNS-rebound Host, a bind
beyond loopback, idle half-open connections and an oversized body."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID, uuid4

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from pydantic import SecretStr
from typer.testing import CliRunner

from api.app import create_app
from api.deps import get_launcher
from api.prefect_reader import PrefectReader
from api.security import COOKIE
from api.server import server_config
from photoindex.cli import app as cli
from photoindex.settings import Settings, get_settings
from tests.environ import environ
from tests.loopback import LOOPBACK, served_in_thread

UNREACHABLE = "http://127.0.0.1:9/api"
EVIL = "http://evil.example"
TOKEN = "correct-horse-battery-staple"


class Launcher:
    """Records the sessions a request would have started."""

    def __init__(self) -> None:
        self.calls: list[Path] = []

    async def __call__(self, folder: Path, faces: bool) -> UUID:
        self.calls.append(folder)
        return uuid4()


def _client(settings: Settings, launcher: Launcher | None = None) -> TestClient:
    app = create_app(settings, PrefectReader(settings, timeout_s=2))
    if launcher is not None:
        app.dependency_overrides[get_launcher] = lambda: launcher
    return TestClient(app, raise_server_exceptions=False, base_url=LOOPBACK)


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("library")
    (root / "holiday").mkdir()
    return root


@pytest.fixture(scope="module")
def settings(library: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(
        prefect_api_url=UNREACHABLE,
        library_roots=[library],
        data_dir=tmp_path_factory.mktemp("data"),
    )


@pytest.fixture(scope="module")
def launcher() -> Launcher:
    return Launcher()


@pytest.fixture(scope="module")
def client(settings: Settings, launcher: Launcher) -> Iterator[TestClient]:
    with _client(settings, launcher) as c:
        yield c


# Finding 2: a page on another origin sends cancel as a simple request (no preflight).
@pytest.mark.parametrize("action", ["cancel", "pause", "resume"])
def test_a_cross_origin_control_request_gets_403(client: TestClient, action: str) -> None:
    url = f"/api/v1/training/sessions/{uuid4()}/{action}"
    for headers in [
        {"Origin": EVIL},
        {"Origin": "null"},  # a sandboxed frame or a file:// page
        {"Sec-Fetch-Site": "cross-site"},  # a browser that left Origin out
        {"Origin": "http://127.0.0.1:3000"},  # another local web app: same site, not us
    ]:
        answer = client.post(url, headers=headers)
        assert answer.status_code == 403, (headers, answer.text)
        assert answer.json()["detail"].startswith("Cross-site request refused"), answer.text
    # The API's own page, and a client that is no browser, reach the route (Prefect is down).
    own = client.post(url, headers={"Origin": LOOPBACK, "Sec-Fetch-Site": "same-origin"})
    assert own.status_code == 503, own.text
    assert client.post(url).status_code == 503


def test_a_cross_origin_start_starts_nothing(
    client: TestClient, library: Path, launcher: Launcher
) -> None:
    before = len(launcher.calls)
    body = {"folder": str(library / "holiday")}
    answer = client.post("/api/v1/training/sessions", json=body, headers={"Origin": EVIL})
    assert answer.status_code == 403, answer.text
    assert len(launcher.calls) == before
    assert client.post("/api/v1/training/sessions", json=body).status_code == 201


# Finding 3: a rebound name resolves to 127.0.0.1, and the browser sends its own Host.
@pytest.mark.parametrize("host", ["rebind.example:8000", "rebind.example", "127.0.0.1.evil.io"])
def test_a_rebinding_host_gets_400(client: TestClient, host: str) -> None:
    for path in ["/api/v1/training/sessions", "/api/v1/persons", "/", "/static/session.js"]:
        answer = client.get(path, headers={"Host": host})
        assert answer.status_code == 400, (path, answer.text)
        assert "is not a name this API answers to" in answer.json()["detail"]


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost:8000", "[::1]:8000", "LOCALHOST"])
def test_loopback_hosts_are_served(client: TestClient, host: str) -> None:
    assert client.get("/api/v1/persons", headers={"Host": host}).status_code != 400


def test_the_bind_address_and_listed_names_are_served(settings: Settings) -> None:
    bound = settings.model_copy(
        update={"api_host": "192.168.1.20", "api_allowed_hosts": ["photos.lan"]}
    )
    with _client(bound) as c:
        for host in ["192.168.1.20:8000", "photos.lan", "localhost"]:
            assert c.get("/", headers={"Host": host}).status_code == 200, host
        assert c.get("/", headers={"Host": "rebind.example"}).status_code == 400


# Finding 4: exposing the API needs a token.
def test_serve_beyond_loopback_without_a_token_is_refused_in_one_line(tmp_path: Path) -> None:
    with environ(PHOTOINDEX_DATA_DIR=str(tmp_path)):
        get_settings.cache_clear()
        try:
            result = CliRunner().invoke(cli, ["serve", "--host", "0.0.0.0"])
        finally:
            get_settings.cache_clear()
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "PHOTOINDEX_API_TOKEN" in lines[0], result.output
    assert not (tmp_path / "prefect" / "server.log").exists()  # nothing was started


@pytest.fixture(scope="module")
def guarded(settings: Settings) -> Iterator[TestClient]:
    exposed = settings.model_copy(update={"api_host": "0.0.0.0", "api_token": SecretStr(TOKEN)})
    with _client(exposed) as c:
        yield c


def test_with_a_token_rest_needs_the_bearer_token(guarded: TestClient) -> None:
    missing = guarded.get("/api/v1/persons")
    assert missing.status_code == 401
    assert "Authorization: Bearer" in missing.json()["detail"]
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = guarded.get("/api/v1/persons", headers={"Authorization": "Bearer guess-guess-guess"})
    assert wrong.status_code == 401
    right = guarded.get("/api/v1/persons", headers={"Authorization": f"Bearer {TOKEN}"})
    assert right.status_code == 200, right.text
    assert guarded.get("/healthz").status_code == 503  # liveness stays open (Prefect is down)
    # A wildcard bind answers any Host name: the token, not the name, keeps pages out.
    named = guarded.get("/api/v1/persons", headers={"Authorization": f"Bearer {TOKEN}",
                                                     "Host": "nas.lan:8000"})
    assert named.status_code == 200


def test_with_a_token_pages_need_a_login_that_sets_a_cookie(guarded: TestClient) -> None:
    page = guarded.get("/sessions/" + str(uuid4()), headers={"Accept": "text/html"},
                       follow_redirects=False)
    assert page.status_code == 303
    assert page.headers["location"].startswith("/login?next=/sessions/")
    assert "PHOTOINDEX_API_TOKEN" in guarded.get("/login").text
    assert guarded.post("/login", json={"token": "guess-guess-guess"}).status_code == 401
    assert COOKIE not in guarded.cookies
    ok = guarded.post("/login", json={"token": TOKEN})
    assert ok.status_code == 204, ok.text
    set_cookie = ok.headers["set-cookie"].lower()
    assert "httponly" in set_cookie and "samesite=strict" in set_cookie
    assert TOKEN not in set_cookie  # the cookie holds a digest, not the token
    assert guarded.get("/", headers={"Accept": "text/html"}).status_code == 200
    assert guarded.get("/api/v1/persons").status_code == 200
    guarded.cookies.clear()
    forged = guarded.get("/api/v1/persons", cookies={COOKIE: "0" * 64})
    assert forged.status_code == 401


# Finding 5: the body is refused before it is read.
def test_an_oversized_body_gets_413(client: TestClient, launcher: Launcher) -> None:
    before = len(launcher.calls)
    huge = b'{"folder": "' + b"a" * 200_000 + b'"}'
    answer = client.post(
        "/api/v1/training/sessions", content=huge, headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 413, answer.text
    assert "larger than 65536 bytes" in answer.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"folder": "'
        for _ in range(100):
            yield b"a" * 10_000
        yield b'"}'

    answer = client.post(
        "/api/v1/training/sessions", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 413, answer.text
    assert len(launcher.calls) == before


@pytest.fixture(scope="module")
def served(settings: Settings) -> Iterator[tuple[str, int, uvicorn.Server]]:
    """The API under uvicorn as `photoindex serve` runs it, with small limits."""
    limited = settings.model_copy(
        update={"api_max_connections": 8, "api_header_timeout_s": 1.0, "api_keep_alive_s": 1}
    )
    app = create_app(limited, PrefectReader(limited, timeout_s=2))
    with served_in_thread(
        app, lambda a, port: server_config(a, limited, "127.0.0.1", port)
    ) as (port, server):
        yield "127.0.0.1", port, server


def _closed_by_server(sock: socket.socket, within_s: float) -> bool:
    sock.settimeout(within_s)
    try:
        return sock.recv(1024) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_idle_half_open_connections_cannot_starve_the_api(
    served: tuple[str, int, uvicorn.Server],
) -> None:
    host, port, server = served
    idle = []
    try:
        for _ in range(30):  # the review's 1,100, scaled to a limit of 8
            sock = socket.create_connection((host, port))
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            idle.append(sock)
        time.sleep(0.3)
        assert len(server.server_state.connections) <= 8
        beyond = [s for s in idle[8:] if _closed_by_server(s, 0.5)]
        assert len(beyond) == 22  # closed at once, so they hold no file descriptor
        # The ones let in get no longer than the header deadline, trickling or not.
        idle[0].sendall(b"a")
        assert all(_closed_by_server(s, 2.0) for s in idle[:8])
        page = httpx.get(f"http://{host}:{port}/", timeout=5)
        assert page.status_code == 200
    finally:
        for sock in idle:
            sock.close()


def test_a_200_mb_body_is_refused_before_it_is_sent(
    served: tuple[str, int, uvicorn.Server],
) -> None:
    host, port, _ = served
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(
            b"POST /api/v1/training/sessions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 200000000\r\n\r\n"
        )
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
