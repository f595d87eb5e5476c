"""The deployment end to end: the README's commands against a real Prefect server and worker.

Exactly the README's shell: `eval "$(photoindex prefect-env)"` (the local server's
address and auth string), `python -m photoindex.prefect_app` (Prefect's server, retrying
writes SQLite refused), `prefect work-pool create`,
`prefect --no-prompt deploy --all` from the checkout and `prefect worker start`. The
test harness's server is not enough here: it runs without the scheduler service, so
cron schedules would never create runs on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId
from prefect.client.schemas.objects import FlowRun, StateType, WorkPoolStatus
from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings
from prefect.settings.legacy import Setting

from photoindex.launch import DEPLOYMENT_NAME, submit_via_deployment
from photoindex.prefect_server import healthy, stop_server
from photoindex.settings import Settings
from tasks.catalog import Catalog
from tasks.discover import hash_file
from tests.loopback import free_port
from tests.photos import PhotoManifest, make_photo_folder

CHECKOUT = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).with_name("prefect"))
PYTHON = str(Path(sys.executable).with_name("python"))
PHOTOINDEX = str(Path(sys.executable).with_name("photoindex"))
POOL = "local-process"  # as prefect.yaml and the README name it


@dataclass
class Stack:
    api_url: str
    env: dict[str, str]  # what the README's shell has: the API URL, the data folder, the library
    settings: Settings  # the worker's photoindex settings
    library: PhotoManifest
    logs: Path

    def client_settings(self) -> dict[Setting, str]:
        """What the README's shell gives a Prefect client: the address and the auth string."""
        return {
            PREFECT_API_URL: self.api_url,
            PREFECT_API_AUTH_STRING: self.env["PREFECT_API_AUTH_STRING"],
        }



def _prefect(stack: Stack, *args: str) -> str:
    done = subprocess.run(
        [PREFECT, *args],
        cwd=CHECKOUT,
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, f"prefect {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _readme_shell(env: dict[str, str]) -> dict[str, str]:
    """The environment after the README's `eval "$(.venv/bin/photoindex prefect-env)"`."""
    script = f'eval "$({shlex.quote(PHOTOINDEX)} prefect-env)" && env -0'
    done = subprocess.run(
        ["bash", "-c", script], cwd=CHECKOUT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return dict(item.split("=", 1) for item in done.stdout.split("\0") if item)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[Stack]:
    """The README's terminal 1 on a free port; a data folder and a small library of its own."""
    root = tmp_path_factory.mktemp("deploy")
    settings = Settings(data_dir=root / "data", prefect_port=free_port())
    library = make_photo_folder(root / "library", n_derived=0)
    # A fresh shell: no Prefect settings of this test session, the tiny CLIP model's
    # PHOTOINDEX_* settings, but this stack's own data folder, port and library.
    shell = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")} | {
        "PHOTOINDEX_DATA_DIR": str(settings.data_dir),
        "PHOTOINDEX_PREFECT_PORT": str(settings.prefect_port),
        "PHOTOINDEX_LIBRARY": str(library.root),
    }
    env = _readme_shell(shell) | {"PREFECT_LOGGING_LEVEL": "INFO"}
    api_url = env["PREFECT_API_URL"]
    log_path = root / "server.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [PYTHON, "-m", "photoindex.prefect_app", "--host", "127.0.0.1"]
            + ["--port", str(settings.prefect_port)],
            cwd=CHECKOUT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 240
        while not healthy(api_url):
            assert server.poll() is None, "the server exited:\n" + log_path.read_text()
            assert time.monotonic() < deadline, "the server did not start:\n" + log_path.read_text()
            time.sleep(0.5)
        yield Stack(api_url, env, settings, library, root)
    finally:
        stop_server(server)


def test_the_readme_server_refuses_requests_without_its_auth_string(stack: Stack) -> None:
    assert httpx.get(stack.api_url + "/admin/version").status_code == 401
    user, password = stack.env["PREFECT_API_AUTH_STRING"].split(":", 1)
    assert httpx.get(stack.api_url + "/admin/version", auth=(user, password)).status_code == 200
    assert (stack.settings.prefect_home / "auth-string").stat().st_mode & 0o077 == 0


@pytest.fixture(scope="module")
def deployed(stack: Stack) -> Iterator[UUID]:
    """The README's pool and deployment commands, run literally from the checkout."""
    _prefect(stack, "work-pool", "create", POOL, "--type", "process")
    out = _prefect(stack, "--no-prompt", "deploy", "--all")
    assert f"Deployment '{DEPLOYMENT_NAME}' successfully created" in " ".join(out.split())
    with temporary_settings(updates=stack.client_settings()):
        with get_client(sync_client=True) as client:
            yield client.read_deployment_by_name(DEPLOYMENT_NAME).id


@pytest.fixture
def api(stack: Stack) -> Iterator[SyncPrefectClient]:
    """This process talks to the stack's server, not the session's test harness."""
    with temporary_settings(updates=stack.client_settings()):
        with get_client(sync_client=True) as client:
            yield client


def _wait_for(what: str, check: Any, timeout: float, poll: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_deploy_records_the_checkout_the_library_one_at_a_time_and_a_nightly_run(
    deployed: UUID, stack: Stack, api: SyncPrefectClient
) -> None:
    deployment = api.read_deployment(deployed)
    assert deployment.entrypoint == "flows/index_photos.py:index_photos"
    assert deployment.pull_steps == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(CHECKOUT)}}
    ]
    assert deployment.parameters == {"folder": str(stack.library.root), "faces": True}
    assert deployment.work_pool_name == POOL
    assert deployment.global_concurrency_limit is not None
    assert deployment.global_concurrency_limit.limit == 1
    [nightly] = deployment.schedules
    assert (nightly.slug, nightly.active) == ("nightly", True)
    assert nightly.schedule.model_dump(include={"cron", "timezone"}) == {
        "cron": "0 3 * * *",
        "timezone": "UTC",
    }

    def scheduled() -> list[FlowRun]:
        runs = api.read_flow_runs(
            flow_run_filter=FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=[deployed]))
        )
        return [r for r in runs if r.auto_scheduled and r.state_type == StateType.SCHEDULED]

    # Prefect's scheduler service creates the coming nights' runs within seconds.
    runs = _wait_for("the scheduler to create nightly runs", scheduled, timeout=60)
    for run in runs:
        assert run.expected_start_time is not None
        start = run.expected_start_time.astimezone(UTC)
        assert (start.hour, start.minute) == (3, 0), start


@pytest.fixture(scope="module")
def worker(deployed: UUID, stack: Stack) -> Iterator[Path]:
    """`prefect worker start --pool local-process`, polling every 2 s instead of 10."""
    log_path = stack.logs / "worker.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [PREFECT, "worker", "start", "--pool", POOL],
            cwd=CHECKOUT,
            env=stack.env | {"PREFECT_WORKER_QUERY_SECONDS": "2"},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield log_path
    finally:
        # The worker wants a second signal; its flow-run processes share its group.
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        # Whatever the worker left in its group (flow-run processes) goes too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _submit(stack: Stack) -> UUID | None:
    with temporary_settings(updates=stack.client_settings()):
        return asyncio.run(submit_via_deployment(stack.library.root, faces=True))


def test_without_a_worker_nothing_is_submitted(deployed: UUID, stack: Stack) -> None:
    assert _submit(stack) is None  # the caller then runs the session itself


def test_a_worker_runs_submitted_sessions_one_at_a_time_to_completion(
    worker: Path, stack: Stack, api: SyncPrefectClient, deployed: UUID
) -> None:
    _wait_for(
        "the worker to come online",
        lambda: api.read_work_pool(POOL).status == WorkPoolStatus.READY,
        timeout=60,
    )
    first, second = _submit(stack), _submit(stack)
    assert first is not None and second is not None

    def finished() -> list[FlowRun] | None:
        runs = [api.read_flow_run(first), api.read_flow_run(second)]
        return runs if all(r.state is not None and r.state.is_final() for r in runs) else None

    try:
        runs = _wait_for("both runs to finish", finished, timeout=240, poll=1.0)
    except AssertionError:
        pytest.fail("runs did not finish; worker log:\n" + worker.read_text()[-6000:])
    log = worker.read_text()
    for run in runs:
        assert run.state is not None and run.state.is_completed(), (run.state, log[-6000:])
        assert run.deployment_id == deployed and run.work_pool_name == POOL
        assert f"submitting flow run '{run.id}'" in log
    # concurrency_limit 1: the second session waited for the first to end.
    spans = sorted((r.start_time, r.end_time) for r in runs if r.start_time and r.end_time)
    assert len(spans) == 2 and spans[1][0] >= spans[0][1], spans

    # The worker's flow processes used this stack's settings (inherited from its env).
    catalog = Catalog(stack.settings)
    indexed = {
        r["sha256"]: r["n_faces"]
        for r in catalog.query("SELECT sha256, n_faces FROM images WHERE status = 'indexed'")
    }
    assert set(indexed) == {hash_file(p.path) for p in stack.library.photos}
    group = next(p for p in stack.library.photos if p.source == "group_t1")
    assert indexed[hash_file(group.path)] == 6
    embeds = catalog.query(
        "SELECT status, count(*) AS n FROM status WHERE phase = 'embed' GROUP BY status"
    )
    # The second session found everything done: each photo was embedded once.
    assert embeds == [{"status": "indexed", "n": len(stack.library.photos)}]
