"""The warm indexer: a long-lived process that keeps the models loaded and runs sessions.

`photoindex serve` starts one beside the API, and `photoindex indexer` runs one alone.
It imports everything once, loads the models of its settings, and listens on a Unix
socket in the data folder (mode 0600: this user's processes only, never a web page).
The launcher hands it a created session; it claims and runs the session here, so the
first batch starts about a second after the request instead of after 15-20 s of
imports and model loads. Models idle for `PHOTOINDEX_MODEL_IDLE_S` are unloaded, as
Immich's ML service does; the next session loads them again.

Measured (README, Performance): a new Python process per session, however lean its
imports, pays about 2.6 s for `import prefect` alone before it can start the flow, so a
process that stays up is the only route to the ~2 s target; Dask workers would keep the
models warm but not the flow process.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from photoindex.settings import Settings, get_settings

logger = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 2.0
DUE_CHECK_S = 30.0
"""How often an idle warm indexer looks for the deployment's scheduled runs that are due."""
MAX_REQUEST = 4096


class IndexerUnavailable(RuntimeError):
    """No warm indexer answers for this data folder."""


def socket_path(settings: Settings) -> Path:
    """Where the warm indexer of a data folder listens."""
    return settings.data_dir.resolve() / "run" / "indexer.sock"


def fingerprint(settings: Settings) -> str:
    """What a session's results depend on: a warm indexer serves only identical settings."""
    fields = settings.model_dump(
        exclude={"prefect_api_url", "prefect_port", "library_roots", "model_idle_s"}
    )
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


class IndexerClient:
    """Talks to the warm indexer of one data folder."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        """One request, one answer; IndexerUnavailable when nobody answers."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(REQUEST_TIMEOUT_S)
                conn.connect(str(self.path))
                conn.sendall(json.dumps(request).encode() + b"\n")
                answer = conn.makefile("rb").readline(MAX_REQUEST * 4)
        except OSError as err:
            raise IndexerUnavailable(f"no warm indexer at {self.path}: {err}") from err
        try:
            reply: dict[str, Any] = json.loads(answer)
        except ValueError as err:
            raise IndexerUnavailable(f"the warm indexer at {self.path} answered badly") from err
        return reply

    def status(self) -> dict[str, Any]:
        """Its pid, settings fingerprint, loaded models, model loads, sessions run and the
        last one's read-ahead."""
        return self.ask({"op": "status"})

    def unload(self) -> list[str]:
        """Have it unload its models now, as it does after PHOTOINDEX_MODEL_IDLE_S idle."""
        return list(self.ask({"op": "unload"}).get("unloaded", []))

    def run(self, session_id: UUID) -> None:
        """Hand it a created session to run."""
        reply = self.ask({"op": "run", "session": str(session_id)})
        if not reply.get("accepted"):
            raise IndexerUnavailable(f"the warm indexer refused: {reply.get('reason')}")


def warm_indexer(settings: Settings) -> IndexerClient | None:
    """The warm indexer serving this data folder with these settings, if one answers."""
    path = socket_path(settings)
    if not path.exists():
        return None
    client = IndexerClient(path)
    try:
        status = client.status()
    except IndexerUnavailable as err:
        logger.info("%s", err)
        return None
    if status.get("fingerprint") != fingerprint(settings):
        logger.info("the warm indexer at %s runs other settings: not using it", path)
        return None
    return client


class WarmIndexer:
    """The service: a socket thread takes requests, the main thread runs sessions."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.path = socket_path(settings)
        self.sessions: queue.Queue[UUID] = queue.Queue()
        self.sessions_run = 0
        self.read_ahead: dict[str, int] = {}
        """The last session's read-ahead: photos decoded, and taken by its embed phase."""
        self.running: UUID | None = None
        self.last_used = time.monotonic()
        self._last_due_check = 0.0
        self._stop = threading.Event()

    def warm_up(self) -> None:
        """Import the flows and what their phases import as they start, load every model
        a session uses, and run each once, so that the first session pays none of it.

        Measured before (bench_warm_start): the indexer's first session took 0.5-0.8 s
        longer to cluster than the next ones (hdbscan's imports) and 0.6 s longer to
        start embedding (the vector store's imports and the models' first passes); then
        0.26 s longer to start its first subflow (the imports below, found with cProfile).
        """
        import numpy as np
        import prefect.task_engine  # noqa: F401  (the batches' task runs)
        import prefect.utilities.visualization  # noqa: F401  (a subflow's call imports it)
        from PIL import Image

        import flows.index_photos  # noqa: F401  (torch, open_clip, onnxruntime)
        import tasks.cluster  # noqa: F401  (hdbscan)
        import tasks.embed  # noqa: F401
        import tasks.faces  # noqa: F401
        import tasks.vectors  # noqa: F401  (qdrant)
        from tasks.clustering import cluster_embeddings
        from tasks.models.registry import clip_embedder, face_analyzer

        started = time.monotonic()
        clip = clip_embedder(self.settings)
        faces = face_analyzer(self.settings, threads=1)  # what the faces phase asks for
        clip.load()
        faces.load()
        loaded = time.monotonic() - started
        blank = Image.new("RGB", (640, 480), (128, 128, 128))
        clip.embed_images([blank])
        faces.analyze(np.asarray(blank)[:, :, ::-1].copy())
        faces.encoder.embed(np.full((112, 112, 3), 128, dtype=np.uint8))
        cluster_embeddings(np.random.default_rng(0).standard_normal((16, 8)))
        passes = time.monotonic() - started - loaded
        # A subflow's parameters go through fastapi's encoder: its first use imports
        # fastapi (0.28 s here).
        flows.index_photos.index_photos.serialize_parameters({"folder": "/", "faces": True})
        self._tidy_prefect()
        logger.info("warm: models loaded in %.1f s, first passes %.1f s", loaded, passes)

    def _tidy_prefect(self) -> None:
        """Prune Prefect's old runs as the service starts (sessions then look at most
        hourly): the first session also no longer pays the first async client and the
        filter models pydantic builds on first use."""
        import httpx

        from tasks.housekeeping import prune_runs

        try:
            prune_runs(self.settings)
        except httpx.HTTPError as err:  # the Prefect API is away: the sessions will prune
            logger.warning("could not prune old flow runs: %s", err)

    def status(self) -> dict[str, Any]:
        from tasks.models import base
        from tasks.models.registry import loaded_models

        return {
            "pid": os.getpid(),
            "data_dir": str(self.settings.data_dir.resolve()),
            "fingerprint": fingerprint(self.settings),
            "models": loaded_models(),
            "model_loads": base.load_count,
            "sessions_run": self.sessions_run,
            "read_ahead": self.read_ahead,
            "running": str(self.running) if self.running else None,
            "queued": self.sessions.qsize(),
        }

    def _unload(self) -> list[str]:
        from tasks.models.registry import unload_all

        if self.running is not None:
            return []  # a session uses them now
        return unload_all()

    def _take_due_runs(self) -> None:
        """Queue the deployment's runs that are due (the nightly schedule): with a warm
        indexer up, they run here with the models loaded instead of waiting for a worker."""
        now = time.monotonic()
        if now - self._last_due_check < DUE_CHECK_S:
            return
        self._last_due_check = now
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import (
            DeploymentFilter,
            DeploymentFilterName,
            FlowRunFilter,
            FlowRunFilterExpectedStartTime,
            FlowRunFilterState,
            FlowRunFilterStateType,
        )
        from prefect.client.schemas.objects import StateType

        from photoindex.launch import DEPLOYMENT_NAME

        due = FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])),
            expected_start_time=FlowRunFilterExpectedStartTime.model_validate(
                {"before_": datetime.now(UTC)}
            ),
        )
        deployment = DeploymentFilter(
            name=DeploymentFilterName(any_=[DEPLOYMENT_NAME.split("/")[1]])
        )
        try:
            with get_client(sync_client=True) as client:
                runs = client.read_flow_runs(
                    flow_run_filter=due, deployment_filter=deployment, limit=5
                )
        except Exception as err:  # the Prefect API is away: look again at the next tick
            logger.warning("could not look for due scheduled runs: %s", err)
            return
        for run in runs:
            logger.info("taking scheduled run %s (%s)", run.id, run.name)
            self.sessions.put(run.id)

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(REQUEST_TIMEOUT_S)
            try:
                request = json.loads(conn.makefile("rb").readline(MAX_REQUEST))
                op = request.get("op")
                if op == "status":
                    reply = self.status()
                elif op == "run":
                    self.sessions.put(UUID(str(request["session"])))
                    reply = {"accepted": True}
                elif op == "unload":  # what idleness does, at once (tests, benchmarks)
                    reply = {"unloaded": self._unload()}
                else:
                    reply = {"accepted": False, "reason": f"unknown op {op!r}"}
            except (OSError, ValueError, KeyError, AttributeError) as err:
                reply = {"accepted": False, "reason": f"bad request: {err}"}
            try:
                conn.sendall(json.dumps(reply).encode() + b"\n")
            except OSError:
                pass

    def _listen(self, server: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    @contextmanager
    def _reading_ahead(self, parameters: dict[str, Any]) -> Iterator[None]:
        """Decode the session's first photos to do while Prefect starts its runs
        (`tasks.readahead`); not when batches run on Dask workers, who decode their own."""
        from flows.embed_images import embed_phase
        from flows.index_photos import session_folder
        from tasks.readahead import reading_ahead

        try:
            folder = session_folder(str(parameters["folder"]))
        except (KeyError, OSError):  # the session's own run says what is wrong
            folder = None
        if folder is None or self.settings.task_runner != "threads":
            yield
            return
        ahead = None
        try:
            with reading_ahead(embed_phase(folder, bool(parameters.get("faces", True)))) as ahead:
                yield
        finally:
            if ahead is not None:
                self.read_ahead = {"decoded": ahead.decoded, "taken": ahead.taken}

    def serve_forever(self) -> None:
        """Warm up, listen, and run sessions until SIGTERM or SIGINT."""
        from flows.runners import without_flow_heartbeats

        with without_flow_heartbeats():  # once for every session (see the function)
            self._serve()

    def _serve(self) -> None:
        from photoindex.runner import claim, run_session
        from tasks.models.registry import loaded_models

        self.warm_up()
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path.unlink(missing_ok=True)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # the socket file is created 0600
        try:
            server.bind(str(self.path))
        finally:
            os.umask(old_umask)
        server.listen(16)
        signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        threading.Thread(target=self._listen, args=(server,), daemon=True).start()
        logger.info("warm indexer ready at %s", self.path)
        print(f"warm indexer ready at {self.path}", flush=True)  # noqa: T201 (serve waits for it)
        idle_s = self.settings.model_idle_s
        try:
            while not self._stop.is_set():
                try:
                    session_id = self.sessions.get(timeout=1.0)
                except queue.Empty:
                    idle = time.monotonic() - self.last_used
                    if idle_s > 0 and idle > idle_s and loaded_models():
                        self._unload()
                    self._take_due_runs()
                    continue
                self.running = session_id
                try:
                    flow_run = claim(session_id, route="warm")
                    if flow_run is not None:
                        with self._reading_ahead(flow_run.parameters):
                            run_session(flow_run)
                except Exception:  # a failed session must not take the service down
                    logger.exception("session %s failed to run", session_id)
                finally:
                    self.running = None
                    self.sessions_run += 1
                    self.last_used = time.monotonic()
        finally:
            server.close()
            self.path.unlink(missing_ok=True)


def start_indexer(settings: Settings) -> threading.Thread:
    """Run a warm indexer as a child of this process, restarted if it dies; it ends with us."""
    import atexit
    import subprocess

    from photoindex.prefect_server import _die_with_parent

    log_dir = settings.data_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    children: list[subprocess.Popen[bytes]] = []

    def stop() -> None:
        for child in children:
            if child.poll() is None:
                child.terminate()

    def keep() -> None:
        while True:
            with open(log_dir / "indexer.log", "ab") as log:
                child = subprocess.Popen(
                    [sys.executable, "-m", "photoindex.indexer"],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=os.environ.copy(),
                    preexec_fn=_die_with_parent,
                )
            children[:] = [child]
            code = child.wait()
            logger.warning("the warm indexer exited with code %s; restarting it", code)
            time.sleep(5.0)

    atexit.register(stop)
    thread = threading.Thread(target=keep, name="warm-indexer", daemon=True)
    thread.start()
    return thread


def main() -> int:
    """`python -m photoindex.indexer`: run the warm indexer of the configured data folder."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per Prefect request
    WarmIndexer(get_settings()).serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
