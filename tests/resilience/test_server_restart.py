"""The embedded Prefect server dies mid-run and comes back on the same port and database."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from uuid import UUID

import pytest
from fastapi.testclient import TestClient
from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

from api.app import create_app
from api.prefect_reader import PrefectReader
from photoindex.prefect_server import auth_string, ensure_prefect_api, healthy, stop_server
from photoindex.settings import Settings
from tests.loopback import LOOPBACK, free_port
from tests.resilience.conftest import Clean
from tests.resilience.helpers import (
    assert_healthy,
    assert_same_as_clean,
    count_rows,
    flow_run_state,
    index_in_process,
    snapshot,
    start_child_session,
    use_data_dir,
    wait_until,
)

pytestmark = pytest.mark.usefixtures("prefect_harness", "data_dir")


@contextmanager
def restored_environ() -> Iterator[None]:
    """`ensure_prefect_api` exports its URL for this process: undo that after the block."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)



def _start_server(settings: Settings) -> tuple[str, subprocess.Popen[bytes]]:
    with restored_environ():
        url, proc = ensure_prefect_api(settings, wait_s=240)
    assert proc is not None, f"something already answered at {url}"
    return url, proc


def _task_run_states(session_id: UUID) -> set[str]:
    """The state names of every task run in a session's phase runs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterParentFlowRunId,
    )

    phases = FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[session_id]))
    with get_client(sync_client=True) as client:
        ids = [run.id for run in client.read_flow_runs(flow_run_filter=phases)]
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)), limit=200
        )
    return {(run.state.name if run.state else None) or "none" for run in runs} or {"none"}


def test_prefect_server_restart_mid_run(clean: Clean, tmp_path: Path) -> None:
    """Server killed in the embed phase: the API answers 503, then 200; the session finishes."""
    data = tmp_path / "data"
    server_settings = Settings(data_dir=data, prefect_api_url=None, prefect_port=free_port())
    url, server = _start_server(server_settings)
    servers = [server]
    auth = auth_string(server_settings)  # the server wants it from every client
    env = {
        "PHOTOINDEX_CLIP_BATCH_SIZE": "1",
        "PHOTOINDEX_FACE_BATCH_SIZE": "2",
        "PREFECT_API_AUTH_STRING": auth,
    }
    with temporary_settings(updates={PREFECT_API_URL: url, PREFECT_API_AUTH_STRING: auth}):
        child = start_child_session(clean.folder, data, url, **env)
    api_settings = Settings(prefect_api_url=url)
    reader = PrefectReader(api_settings, cache_ttl_s=0, calibration_sessions=0, timeout_s=3)
    progress = f"/api/v1/training/sessions/{child.session_id}/progress-unified"
    try:
        with (
            # The API's client is made in TestClient's thread, from this context.
            temporary_settings(updates={PREFECT_API_AUTH_STRING: auth}),
            TestClient(
                create_app(api_settings, reader), raise_server_exceptions=False, base_url=LOOPBACK
            ) as api,
        ):
            wait_until(
                lambda: count_rows(child.settings, "SELECT count(*) AS n FROM status") >= 2,
                240,
                "the embed phase to record its first photos",
            )
            assert api.get(progress).status_code == 200
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(10)
            down_at = time.monotonic()
            assert not healthy(url, timeout=1)
            answer = api.get(progress)
            assert answer.status_code == 503, answer.text
            assert "Prefect API" in answer.json()["detail"], answer.text
            assert child.proc.poll() is None, "the session died with the server"

            url_again, server = _start_server(server_settings)
            servers.append(server)
            assert url_again == url
            assert time.monotonic() - down_at > 2  # a real outage, not a blip
            wait_until(lambda: api.get(progress).status_code == 200, 30, "the API to recover")
            status = api.get(progress).json()["overallStatus"]
            assert status in {"running", "completed"}, status
        code = child.wait(300)
        with temporary_settings(updates={PREFECT_API_URL: url, PREFECT_API_AUTH_STRING: auth}):
            state, message = flow_run_state(child.session_id)
            if code == 0:
                # Task runs report through buffered events: none is lost to the outage.
                wait_until(
                    lambda: _task_run_states(child.session_id) <= {"Completed", "Cached"},
                    30,
                    "every task run to be recorded as finished",
                    interval=0.5,
                )
    finally:
        child.stop()
        for proc in servers:
            stop_server(proc)

    # Either the session rode the outage out, or it ended in a failed state saying why.
    if code != 0:
        assert state in {"FAILED", "CRASHED"} and message, (state, message, child.log)
        with use_data_dir(data):
            index_in_process(clean.folder)
    else:
        assert state == "COMPLETED", (state, message)
    with use_data_dir(data) as settings:
        assert_same_as_clean(snapshot(settings), clean.snapshot)
        assert_healthy(settings)
