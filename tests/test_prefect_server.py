"""The local Prefect server photoindex starts, attacked the way a web page in the user's
browser would: without its auth string, from a foreign origin, without a CSRF token."""

from __future__ import annotations

import asyncio
import os
import ssl
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect.client.orchestration import PrefectClient, get_client
from prefect.settings import (
    PREFECT_API_AUTH_STRING,
    PREFECT_API_SSL_CERT_FILE,
    PREFECT_API_TLS_INSECURE_SKIP_VERIFY,
    PREFECT_API_URL,
    PREFECT_CLIENT_CSRF_SUPPORT_ENABLED,
    temporary_settings,
)

from api.prefect_reader import PrefectReader
from photoindex.prefect_server import (
    PrefectUnavailable,
    auth_string,
    auth_string_path,
    ensure_prefect_api,
    stop_server,
)
from photoindex.settings import Settings
from tests.loopback import free_port

EVIL = "http://evil.example"
# What the attacking page sent in the review: a JSON body a preflight allows.
FLOW = {"name": "pwned"}



@dataclass
class Server:
    url: str
    auth: str
    settings: Settings


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The server `ensure_prefect_api` starts, on a free port with a data folder of its own."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("data"), prefect_port=free_port())
    saved = dict(os.environ)
    proc: subprocess.Popen[bytes] | None = None
    try:
        url, proc = ensure_prefect_api(settings, wait_s=240)
        assert proc is not None, f"something already answered at {url}"
        yield Server(url, os.environ["PREFECT_API_AUTH_STRING"], settings)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        if proc is not None:
            stop_server(proc)


def test_the_auth_string_is_random_private_and_kept(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    first = auth_string(settings)
    path = auth_string_path(settings)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    user, password = first.split(":", 1)
    assert user == "photoindex" and len(password) >= 32
    assert auth_string(settings) == first  # every process of this data folder agrees
    assert auth_string(Settings(data_dir=tmp_path / "other")) != first

    path.chmod(0o644)  # someone loosened it: it is made private again, not trusted as is
    assert auth_string(settings) == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_page_without_the_auth_string_gets_401_and_changes_nothing(server: Server) -> None:
    headers = {"Origin": EVIL, "Content-Type": "application/json"}
    for path in ["/admin/version", "/csrf-token?client=page", "/flows/name/pwned"]:
        answer = httpx.get(server.url + path, headers=headers)
        assert answer.status_code == 401, (path, answer.text)
    wrong = httpx.get(server.url + "/admin/version", auth=("photoindex", "guess"))
    assert wrong.status_code == 401
    # Writes need a CSRF token first, which needs the auth string: refused either way.
    for path, body in [("/flows/", FLOW), ("/flow_runs/filter", {}), ("/deployments/", {})]:
        answer = httpx.post(server.url + path, json=body, headers=headers)
        assert answer.status_code in (401, 403), (path, answer.text)
        fake = headers | {"Prefect-Csrf-Token": "x", "Prefect-Csrf-Client": "page"}
        answer = httpx.post(server.url + path, json=body, headers=fake)
        assert answer.status_code in (401, 403), (path, answer.text)
    user, password = server.auth.split(":", 1)
    gone = httpx.get(server.url + "/flows/name/pwned", auth=(user, password))
    assert gone.status_code == 404, gone.text
    # The health check stays open: it is what tells photoindex a server is up.
    assert httpx.get(server.url + "/health").status_code == 200


def test_a_foreign_origin_gets_no_cors_permission(server: Server) -> None:
    preflight = {
        "Origin": EVIL,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,authorization",
    }
    answer = httpx.options(server.url + "/flows/", headers=preflight)
    assert answer.headers.get("access-control-allow-origin") != EVIL
    assert answer.headers.get("access-control-allow-origin") != "*"
    # Its own UI may.
    ui = f"http://127.0.0.1:{server.settings.prefect_port}"
    answer = httpx.options(server.url + "/flows/", headers=preflight | {"Origin": ui})
    assert answer.headers.get("access-control-allow-origin") == ui


def test_a_state_change_without_a_csrf_token_gets_403(server: Server) -> None:
    user, password = server.auth.split(":", 1)
    answer = httpx.post(server.url + "/flows/", json=FLOW, auth=(user, password))
    assert answer.status_code == 403, answer.text
    assert "CSRF" in answer.json()["detail"]


def test_photoindex_processes_use_it_with_the_exported_auth_string(server: Server) -> None:
    updates = {PREFECT_API_URL: server.url, PREFECT_API_AUTH_STRING: server.auth}
    with temporary_settings(updates=updates):  # what the exported environment gives Prefect
        with get_client(sync_client=True) as client:  # it fetches its CSRF token itself
            flow_id = client.create_flow_from_name("photoindex-auth-check")
            assert client.read_flow(flow_id).name == "photoindex-auth-check"


def test_prefect_clients_of_the_plain_http_api_load_no_system_ca_bundle(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each Prefect client builds an SSL context, even over http://: with the exported
    environment it holds the one placeholder certificate, not the system's CAs (20 ms a
    client), and the client still works."""
    contexts: list[ssl.SSLContext] = []
    create = ssl.create_default_context

    def recorded(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        contexts.append(create(*args, **kwargs))
        return contexts[-1]

    monkeypatch.setattr(ssl, "create_default_context", recorded)
    assert server.url.startswith("http://")
    updates = {
        PREFECT_API_URL: server.url,
        PREFECT_API_AUTH_STRING: server.auth,
        PREFECT_API_TLS_INSECURE_SKIP_VERIFY: os.environ["PREFECT_API_TLS_INSECURE_SKIP_VERIFY"],
        PREFECT_API_SSL_CERT_FILE: os.environ["PREFECT_API_SSL_CERT_FILE"],
    }
    with temporary_settings(updates=updates):
        with get_client(sync_client=True) as client:
            assert client.read_flows(limit=1) is not None
    assert contexts, "the client built no SSL context"
    assert [c.cert_store_stats()["x509_ca"] for c in contexts] == [1] * len(contexts)
    # and the system has CAs to load, so a context that loaded them would be told apart
    assert create().cert_store_stats()["x509_ca"] > 1


def test_the_readers_requests_sent_together_share_one_csrf_token(server: Server) -> None:
    """Prefect's client fetches a CSRF token for each request sent together that finds
    none; the server keeps the last and refuses the others (retried 2 s later)."""
    answers: list[tuple[str, int]] = []

    async def record(response: httpx.Response) -> None:
        answers.append((response.request.url.path, response.status_code))

    def client() -> PrefectClient:
        hooks = {"event_hooks": {"response": [record]}}
        return PrefectClient(server.url, auth_string=server.auth, httpx_settings=hooks)

    async def reads(reader: PrefectReader) -> None:
        async with reader.connected():
            await asyncio.gather(
                *(reader.call(lambda c: c.read_flow_runs(limit=1)) for _ in range(4))
            )

    with temporary_settings(updates={PREFECT_CLIENT_CSRF_SUPPORT_ENABLED: True}):
        asyncio.run(reads(PrefectReader(server.settings, client_factory=client)))
    assert [path for path, status in answers if status == 403] == []
    assert [path for path, _ in answers].count("/api/csrf-token") == 1
    assert [path for path, _ in answers].count("/api/flow_runs/filter") == 4


def test_a_server_of_another_data_folder_is_not_reused(server: Server, tmp_path: Path) -> None:
    other = Settings(data_dir=tmp_path / "other", prefect_port=server.settings.prefect_port)
    saved = dict(os.environ)
    try:
        with pytest.raises(PrefectUnavailable, match="refuses this data folder's auth string"):
            ensure_prefect_api(other)
        url, proc = ensure_prefect_api(server.settings)  # its own data folder reuses it
        assert (url, proc) == (server.url, None)
    finally:
        os.environ.clear()
        os.environ.update(saved)
