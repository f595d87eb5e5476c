"""Starting a session: the one module the CLI, the API and the benchmarks call.

A session is an `index-photos` flow run. `submit_session` decides, atomically for the
data folder, that it may start (no session indexing or waiting to start), counts the
photos with a fast scan, creates the run with its launch route as a tag and the count
as the session's artifact, and hands it to the first route that can run it:
1. the warm indexer of `photoindex serve`, whose models are loaded (`photoindex.indexer`);
2. the `index-photos` deployment, when a worker polls its pool;
3. a new session process (`python -m photoindex.runner`), cold.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal
from uuid import UUID

from photoindex.phases import SESSION_FLOW
from photoindex.settings import Settings, get_settings
from tasks.lock import LibraryBusy, busy_message, library_holder

logger = logging.getLogger(__name__)

Route = Literal["warm", "deployment", "cold"]
LAUNCH_TAG = "photoindex-launch:"
"""Tag prefix naming how a session was started: start-up costs differ, and are calibrated
apart (`photoindex-launch:warm`, `...:cold`, `...:deployment`)."""
DEPLOYMENT_NAME = f"{SESSION_FLOW}/index-photos"
"""The deployment, `flow/deployment` as prefect.yaml names it."""
PENDING_GRACE_S = 600.0
"""A created session that has not taken the data folder's lock after this long is
considered lost (its process never started), and no longer blocks a new one."""


@dataclass(frozen=True)
class Launched:
    """A session that was started, and how."""

    session_id: UUID
    route: Route
    process: subprocess.Popen[bytes] | None = None
    """The cold route's session process (None when a service runs the session)."""


def prepare() -> None:
    """Import now what the first launch of a process would import: the session flow, the
    catalog, the photo scan and the progress artifacts. The API does this as it starts, in
    the background, so its first POST is as quick as the next ones. Measured
    (bench_warm_start): the first session launched from a process went Running 0.3 s later
    than the next ones, and 1.2 s later in a process that had not imported Prefect's client.
    """
    import flows.index_photos  # noqa: F401  (Prefect's flow engine; no model libraries)
    import photoindex.indexer  # noqa: F401
    import tasks.catalog  # noqa: F401  (DuckDB, Arrow)
    import tasks.discover  # noqa: F401
    import tasks.progress  # noqa: F401


def launch_route(tags: list[str]) -> str:
    """The route a session was started by, from its run's tags ('' when unknown)."""
    return next((t.removeprefix(LAUNCH_TAG) for t in tags if t.startswith(LAUNCH_TAG)), "")


def session_name(folder: str) -> str:
    """A readable run name: the folder and the time."""
    return f"{Path(folder).name or folder} {datetime.now(UTC):%Y-%m-%d %H:%M}"


def submit_session(
    folder: Path,
    faces: bool = True,
    settings: Settings | None = None,
    *,
    cold: bool = False,
    requested: float | None = None,
) -> Launched:
    """Start a session on `folder` and return at once; `cold` skips the warm indexer.

    `requested` is when the user asked (epoch seconds; now if not given): the CLI's
    process start, so its own start-up counts as the session's, as the user waits for it.

    Raises LibraryBusy when a session is indexing into this data folder, or was created
    and has not started yet: of concurrent calls, exactly one starts a session.
    """
    from photoindex.indexer import IndexerUnavailable, warm_indexer
    from tasks.catalog import Catalog
    from tasks.discover import count_photos
    from tasks.progress import Counts, publish_session

    requested = time.time() if requested is None else requested
    settings = settings or get_settings()
    folder = folder.resolve()
    with _launch_guard(settings):
        holder = library_holder(settings)
        if holder is not None:
            raise LibraryBusy(busy_message(holder, settings))
        waiting = _waiting_session(settings)
        if waiting is not None:
            raise LibraryBusy(busy_message(f"session {waiting} (not started yet)", settings))
        photos, new = count_photos(folder, Catalog(settings).known_files())
        indexer = None if cold else warm_indexer(settings)
        route: Route = "warm" if indexer is not None else "cold"
        session_id = None
        if indexer is None:
            session_id = asyncio.run(submit_via_deployment(folder, faces))
            route = "deployment" if session_id is not None else "cold"
        if session_id is None:
            session_id = asyncio.run(create_session(folder, faces, route))
        asked = Counts(0, photos, todo=new, stage="queued", requested=requested)
        publish_session(session_id, asked)
        _mark_waiting(settings, session_id)
        process = None
        if indexer is not None:
            try:
                indexer.run(session_id)
            except IndexerUnavailable as err:  # it went away since it answered: run cold
                logger.warning("%s; starting session %s in a new process", err, session_id)
                route = "cold"
                asyncio.run(_set_route(session_id, route))
        if route == "cold":
            process = start_session_process(session_id, settings)
    logger.info("session %s on %s: %d photos, %d new, %s", session_id, folder, photos, new, route)
    return Launched(session_id, route, process)


async def create_session(folder: Path, faces: bool = True, route: Route = "cold") -> UUID:
    """Create the parent flow run of a new session, not yet started."""
    from prefect.client.orchestration import get_client
    from prefect.states import Pending

    from flows.index_photos import index_photos

    async with get_client() as client:
        run = await client.create_flow_run(
            index_photos,
            parameters={"folder": str(folder), "faces": faces},
            name="index " + session_name(str(folder)),
            state=Pending(),
            tags=[LAUNCH_TAG + route],
        )
    return run.id


async def _set_route(session_id: UUID, route: Route) -> None:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        run = await client.read_flow_run(session_id)
        tags = [t for t in run.tags if not t.startswith(LAUNCH_TAG)] + [LAUNCH_TAG + route]
        await client.update_flow_run(session_id, tags=tags)


async def submit_via_deployment(folder: Path, faces: bool) -> UUID | None:
    """A run of the deployment, when a worker polls its pool; else None."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import arun_deployment
    from prefect.exceptions import ObjectNotFound

    from flows.deploy import worker_online

    async with get_client() as client:
        try:
            deployment = await client.read_deployment_by_name(DEPLOYMENT_NAME)
        except ObjectNotFound:
            return None
        if not await worker_online(client, deployment):
            return None
        run = await arun_deployment(
            deployment.id,
            client=client,
            parameters={"folder": str(folder), "faces": faces},
            flow_run_name="index " + session_name(str(folder)),
            tags=[LAUNCH_TAG + "deployment"],
            timeout=0,
            as_subflow=False,
        )
    return run.id


def start_session_process(
    session_id: UUID, settings: Settings | None = None
) -> subprocess.Popen[bytes]:
    """Run a created session in its own process, so a crash cannot take the caller down."""
    settings = settings or get_settings()
    log_dir = settings.data_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log = open(log_dir / f"session-{session_id}.log", "ab")  # noqa: SIM115
    return subprocess.Popen(
        [sys.executable, "-m", "photoindex.runner", str(session_id)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=os.environ.copy(),
        start_new_session=True,
    )


# --- one decision at a time per data folder ------------------------------------------


@contextmanager
def _launch_guard(settings: Settings) -> Iterator[None]:
    settings.locks_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(settings.locks_dir / "launch.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # held for a scan and a few Prefect calls
        yield
    finally:
        os.close(fd)


def _waiting_file(settings: Settings) -> Path:
    return settings.locks_dir / "waiting.json"


def _mark_waiting(settings: Settings, session_id: UUID) -> None:
    path = _waiting_file(settings)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"session": str(session_id), "at": time.time()}))
    os.replace(tmp, path)


def session_started(settings: Settings, session_id: str) -> None:
    """Called by the session once it holds the data folder's lock: it waits no more."""
    path = _waiting_file(settings)
    try:
        if json.loads(path.read_text()).get("session") == session_id:
            path.unlink()
    except (OSError, ValueError):
        pass


def _waiting_session(settings: Settings) -> str | None:
    """A session created here that has not taken the data folder's lock yet, if it can
    still take it: created, queued, or claimed (Running) and on its way to the lock."""
    try:
        info = json.loads(_waiting_file(settings).read_text())
        session, at = str(info["session"]), float(info["at"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if time.time() - at > PENDING_GRACE_S:
        return None
    state = asyncio.run(_state_of(UUID(session)))
    return session if state in {"SCHEDULED", "PENDING", "RUNNING"} else None


async def _state_of(session_id: UUID) -> str | None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    async with get_client() as client:
        try:
            run = await client.read_flow_run(session_id)
        except ObjectNotFound:
            return None
    return run.state_type.value if run.state_type is not None else None
