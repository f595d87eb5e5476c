"""Find the Prefect API, or start and supervise a local Prefect server for it."""

from __future__ import annotations

import atexit
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time

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


class PrefectUnavailable(RuntimeError):
    """The Prefect API cannot be reached or started."""


def healthy(api_url: str, timeout: float = 2.0) -> bool:
    """Whether a Prefect API answers its health check."""
    try:
        return httpx.get(api_url.rstrip("/") + "/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def server_env(settings: Settings, api_url: str) -> dict[str, str]:
    """Environment for our processes: the API URL, offline telemetry, Prefect's home."""
    env = dict(OFFLINE_ENV)
    env["PREFECT_API_URL"] = api_url
    env["PREFECT_HOME"] = str(settings.prefect_home.resolve())
    return env


def ensure_prefect_api(
    settings: Settings, wait_s: float = 90.0
) -> tuple[str, subprocess.Popen[bytes] | None]:
    """Return the API URL to use, starting a local server if none is configured or running.

    The URL is exported to this process's environment so that Prefect and the
    processes it starts use it. A server we start is stopped when we exit.
    """
    if settings.prefect_api_url:
        os.environ.update(OFFLINE_ENV | {"PREFECT_API_URL": settings.prefect_api_url})
        return settings.prefect_api_url, None
    api_url = f"http://127.0.0.1:{settings.prefect_port}/api"
    os.environ.update(server_env(settings, api_url))
    if healthy(api_url):
        return api_url, None
    home = settings.prefect_home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    log_path = home / "server.log"
    log = open(log_path, "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prefect",
            "server",
            "start",
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
