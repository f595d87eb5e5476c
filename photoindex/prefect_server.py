"""Find the Prefect API, or start and supervise a local Prefect server for it.

The local server is locked to this data folder: it requires a random auth string kept
with mode 0600 in `PREFECT_HOME/auth-string`, answers cross-origin requests only from its
own UI, and wants a CSRF token on every state-changing request. Prefect has no Host
allow-list; the auth string is what keeps a rebound page out (a browser never has it).
"""

from __future__ import annotations

import atexit
import base64
import ctypes
import logging
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from photoindex.settings import Settings

logger = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1

OFFLINE_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    # The runs' INFO logs (counts, skipped files and why, timings) go to the Prefect API,
    # so the UI shows what each phase did; the console stays quiet.
    "PREFECT_LOGGING_LEVEL": "INFO",
    "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING",
}


AUTH_USER = "photoindex"
AUTH_FILE = "auth-string"


class PrefectUnavailable(RuntimeError):
    """The Prefect API cannot be reached or started."""


def auth_string_path(settings: Settings) -> Path:
    """Where the local server's auth string lives: in its PREFECT_HOME, mode 0600."""
    return settings.prefect_home.resolve() / AUTH_FILE


def auth_string(settings: Settings) -> str:
    """This data folder's Prefect auth string (`user:password`), created once, mode 0600.

    Two processes creating it at once agree: the first link wins, the other reads it.
    """
    path = auth_string_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists():
        tmp = path.with_name(f".{AUTH_FILE}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, f"{AUTH_USER}:{secrets.token_urlsafe(32)}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process made it first: use theirs
        finally:
            tmp.unlink()
    if path.stat().st_mode & 0o077:
        logger.warning("%s was readable by others; making it private (0600)", path)
        path.chmod(0o600)
    text = path.read_text().strip()
    if ":" not in text:
        raise PrefectUnavailable(f"{path} holds no `user:password` auth string; delete it")
    return text


def ui_origins(settings: Settings) -> list[str]:
    """The origins the local server's own UI (and API) is served from."""
    port = settings.prefect_port
    return [f"http://127.0.0.1:{port}", f"http://localhost:{port}"]


def security_env(settings: Settings) -> dict[str, str]:
    """Prefect settings that lock the local server to this data folder, for server and clients."""
    auth = auth_string(settings)
    return {
        "PREFECT_API_AUTH_STRING": auth,
        "PREFECT_SERVER_API_AUTH_STRING": auth,
        "PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS": ",".join(ui_origins(settings)),
        "PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED": "true",
        "PREFECT_CLIENT_CSRF_SUPPORT_ENABLED": "true",
    }


def local_api_url(settings: Settings) -> str:
    """The API URL of the local server photoindex starts."""
    return f"http://127.0.0.1:{settings.prefect_port}/api"


def shell_exports(settings: Settings) -> str:
    """`export` lines for a shell that runs Prefect's own commands against the local server."""
    env = server_env(settings, local_api_url(settings))
    # The worker's INFO log on the console is what people watch in that terminal.
    env.pop("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL")
    for key in plain_http_env(local_api_url(settings)):  # the shell may point elsewhere later
        env.pop(key, None)
    return "\n".join(f"export {k}={shlex.quote(v)}" for k, v in env.items())


def _basic(auth: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()}


def _accepts(api_url: str, auth: str | None) -> bool:
    """Whether the server answers an authenticated-only endpoint with these credentials."""
    headers = _basic(auth) if auth else {}
    try:
        response = httpx.get(api_url.rstrip("/") + "/admin/version", headers=headers, timeout=5)
    except httpx.HTTPError as e:
        raise PrefectUnavailable(f"the Prefect server at {api_url} stopped answering: {e}") from e
    return response.status_code == 200


def healthy(api_url: str, timeout: float = 2.0) -> bool:
    """Whether a Prefect API answers its health check."""
    try:
        return httpx.get(api_url.rstrip("/") + "/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def server_env(settings: Settings, api_url: str) -> dict[str, str]:
    """Environment for our processes: Prefect's home, the API URL and its auth string,
    the server's CORS and CSRF settings, offline telemetry."""
    env = {"PREFECT_HOME": str(settings.prefect_home.resolve()), "PREFECT_API_URL": api_url}
    return env | security_env(settings) | OFFLINE_ENV | plain_http_env(api_url)


#: A one-certificate CA bundle for Prefect's clients when the API is on plain HTTP: a
#: self-signed certificate whose key was thrown away, so it can verify nothing.
PLAIN_HTTP_CA = Path(__file__).with_name("plain-http-ca.pem")


def plain_http_env(api_url: str) -> dict[str, str]:
    """For an API on plain HTTP, no TLS set-up worth the name in each Prefect client.

    Prefect builds an SSL context for each client it makes, even for `http://`: with
    `PREFECT_API_TLS_INSECURE_SKIP_VERIFY` it loads the system's CA bundle all the same
    (`ssl.create_default_context()`: 20 ms here, with OpenSSL 3); given a bundle file
    (`PREFECT_API_SSL_CERT_FILE`) it loads only that. A warm session makes six such clients
    on its critical path (taking the run, the parent flow, one per subflow), the CLI and
    the API more. Over `http://` there is no certificate to verify, so the bundle is one
    placeholder certificate: 0.3 ms. An `https://` URL keeps full verification.
    """
    if api_url.startswith("http://"):
        return {
            "PREFECT_API_TLS_INSECURE_SKIP_VERIFY": "false",
            "PREFECT_API_SSL_CERT_FILE": str(PLAIN_HTTP_CA),
        }
    return {}


# `prefect server start`, but a write SQLite refused is retried in the server (prefect_app).
SERVER_COMMAND = ("-m", "photoindex.prefect_app")
PREFECT_SERVER_COMMAND = ("-m", "prefect", "server", "start")  # Prefect's own, for comparison


def ensure_prefect_api(
    settings: Settings, wait_s: float = 90.0, command: Sequence[str] = SERVER_COMMAND
) -> tuple[str, subprocess.Popen[bytes] | None]:
    """Return the API URL to use, starting a local server if none is configured or running.

    The URL and the local server's auth string are exported to this process's
    environment so that Prefect and the processes it starts use them. A server we
    start is stopped when we exit. A server already answering on the port is reused
    only if it takes this data folder's auth string.
    """
    if settings.prefect_api_url:
        url = settings.prefect_api_url
        os.environ.update(OFFLINE_ENV | plain_http_env(url) | {"PREFECT_API_URL": url})
        return settings.prefect_api_url, None
    api_url = local_api_url(settings)
    env = server_env(settings, api_url)
    os.environ.update(env)
    if healthy(api_url):
        if not _accepts(api_url, env["PREFECT_API_AUTH_STRING"]):
            raise PrefectUnavailable(
                f"the Prefect server on port {settings.prefect_port} refuses this data "
                f"folder's auth string ({auth_string_path(settings)}): it belongs to another "
                "data folder; stop it or set PHOTOINDEX_PREFECT_PORT"
            )
        if _accepts(api_url, None):
            logger.warning(
                "the Prefect server on port %s takes requests without an auth string: any web "
                "page can drive it; restart it as the README's 'Deploy and schedule' says",
                settings.prefect_port,
            )
        return api_url, None
    home = settings.prefect_home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    log_path = settings.prefect_server_log.resolve()
    log = open(log_path, "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            *command,
            "--host",
            "127.0.0.1",
            "--port",
            str(settings.prefect_port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=os.environ.copy(),
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    atexit.register(stop_server, proc)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise PrefectUnavailable(
                f"the local Prefect server exited with code {proc.returncode}; see {log_path}"
            )
        if healthy(api_url):
            return api_url, proc
        time.sleep(0.5)
    stop_server(proc)
    raise PrefectUnavailable(
        f"the local Prefect server did not start in {wait_s:.0f} s; see {log_path}"
    )


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the process that started us dies, however it dies."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """Stop a server we started, politely first."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()


def ui_url(api_url: str) -> str:
    """The Prefect UI's address for an API URL."""
    return api_url.rstrip("/").removesuffix("/api")
