"""The one module that reads the Prefect API: sessions, phases and artifacts.

A session is one `index-photos` flow run; its phases are its child runs. This module
reads them into a `SessionSnapshot`, picks the session's fixed weights from sessions
that finished before it started, and hands both to `api.progress.compute_progress`.
One Prefect client serves the whole process, and a short per-session cache with
request coalescing keeps many pollers from multiplying Prefect queries.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar
from uuid import UUID

import anyio
import httpx
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    ArtifactFilterType,
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterEndTime,
    FlowRunFilterExpectedStartTime,
    FlowRunFilterId,
    FlowRunFilterParentFlowRunId,
    FlowRunFilterState,
    FlowRunFilterStateType,
    Operator,
)
from prefect.client.schemas.objects import Artifact, FlowRun, StateType
from prefect.client.schemas.sorting import ArtifactSort, FlowRunSort
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_AUTH_STRING

from api.progress import (
    FINAL_STATES,
    PHASES,
    PhaseSnapshot,
    SessionSnapshot,
    compute_progress,
    face_session,
    training_progress,
)
from api.runs import EPOCH, Phases, counts_of, latest_artifacts, run_state, utc
from api.schemas import (
    FaceSessionResponse,
    SessionSummary,
    TrainingProgressResponse,
    UnifiedProgressResponse,
)
from api.weights import CALIBRATION_SESSIONS, Calibration, Weights, calibrate, session_weights
from photoindex.launch import launch_route
from photoindex.phases import (
    BY_CONTRACT,
    BY_FLOW,
    CANCEL_TAG,
    PAUSE_TAG,
    SESSION_ARTIFACT,
    SESSION_FLOW,
)
from photoindex.settings import Settings, get_settings

logger = logging.getLogger(__name__)

DEFAULT_CACHE_TTL_S = 0.25
STALE_FACTOR = 2.0
"""Cached data up to this many TTLs old is served while a background fetch refreshes it."""
DEFAULT_TIMEOUT_S = 10.0
PREFECT_PAGE = 200
"""The most rows the Prefect API returns per request by default."""

T = TypeVar("T")


class PrefectUnavailable(Exception):
    """The Prefect API cannot be reached."""


class SessionNotFound(Exception):
    """No `index-photos` flow run has this id."""


@dataclass(frozen=True)
class _Raw:
    """What Prefect said about a session at one moment."""

    parent: FlowRun
    children: dict[str, FlowRun]
    artifacts: dict[str, Artifact]


@dataclass
class _Entry:
    """One session's cached data and the fetch refreshing it, on one event loop."""

    loop: asyncio.AbstractEventLoop
    value: _Raw | None = None
    fetched_at: float = 0.0
    task: asyncio.Task[_Raw] | None = None


class _Bounded(OrderedDict[UUID, T]):
    """A small LRU map, so per-session memory stays bounded."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def put(self, key: UUID, value: T) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)


def _ended(run: FlowRun) -> bool:
    return run.state_type is not None and run.state_type.value in FINAL_STATES


def _previous(
    history: Sequence[FlowRun], exclude: UUID, before: datetime, n: int
) -> list[FlowRun]:
    """The first `n` of `history` (latest end first) that ended by `before`, except `exclude`."""
    ended = [run for run in history if run.id != exclude and run.end_time is not None]
    return [run for run in ended if (utc(run.end_time) or EPOCH) <= before][:n]


def one_csrf_fetch(client: PrefectClient) -> None:
    """Have a client's requests that are sent together wait for one CSRF token.

    Prefect's client (3.9) fetches a token for each change request (the reads by filter
    are POSTs) that finds none or an expired one, so the reader's gathered requests each
    fetch one; the server keeps the last, refuses the others (403), and the client retries
    them 2 s later. Measured: the benchmark's first read of a session took 2 s in 10 of 30
    sessions, and `photoindex index`'s display stalled as long. One fetch at a time: the
    others find the token it got.
    """
    http = getattr(client, "_client", None)
    fetch = getattr(http, "_add_csrf_headers", None)
    if http is None or fetch is None:
        return  # another client (a test's fake), or a Prefect that changed: as it is
    lock = asyncio.Lock()

    async def add_csrf_headers(request: httpx.Request) -> None:
        async with lock:
            await fetch(request)

    http._add_csrf_headers = add_csrf_headers


class PrefectReader:
    """Reads sessions from Prefect and controls them; one per process, shared by all clients."""

    def __init__(
        self,
        settings: Settings | None = None,
        cache_ttl_s: float = DEFAULT_CACHE_TTL_S,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        client_factory: Callable[[], PrefectClient] | None = None,
        calibration_sessions: int = CALIBRATION_SESSIONS,
    ) -> None:
        self.settings = settings or get_settings()
        self.cache_ttl_s = cache_ttl_s
        self.timeout_s = timeout_s
        self.calibration_sessions = calibration_sessions
        """How many recent sessions calibrate weights; 0 keeps the seed's weights."""
        self._client_factory = client_factory or self._default_client
        self._client: PrefectClient | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._entries: dict[UUID, _Entry] = {}
        self._weights: _Bounded[Weights] = _Bounded(1024)
        self._floors: _Bounded[float] = _Bounded(1024)
        self._ended: _Bounded[Phases] = _Bounded(1024)
        """Phases of sessions whose runs have all ended: they never change again."""
        self._flow_names: dict[UUID, str] = {}
        self.prefect_queries = 0
        """How many Prefect requests this reader sent (for the benchmark)."""

    # --- client lifecycle ---------------------------------------------------------------

    def _default_client(self) -> PrefectClient:
        if self.settings.prefect_api_url:
            # The local server wants its auth string, exported by ensure_prefect_api.
            return PrefectClient(
                self.settings.prefect_api_url, auth_string=PREFECT_API_AUTH_STRING.value()
            )
        return get_client()

    @property
    def api_url(self) -> str:
        if self._client is not None:
            return str(self._client.api_url)
        return self.settings.prefect_api_url or "the configured Prefect API (PREFECT_API_URL)"

    async def start(self) -> None:
        """Open the shared client on the running event loop."""
        await self._get_client()

    async def aclose(self) -> None:
        """Close the shared client."""
        client, self._client, self._client_loop = self._client, None, None
        self._entries.clear()
        if client is not None:
            await client.__aexit__(None, None, None)

    @asynccontextmanager
    async def connected(self) -> AsyncIterator[PrefectReader]:
        """Use the open client of this event loop, or open one for the block's duration."""
        if self._client is not None and self._client_loop is asyncio.get_running_loop():
            yield self
            return
        await self.start()
        try:
            yield self
        finally:
            await self.aclose()

    async def _get_client(self) -> PrefectClient:
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            # A client is bound to the loop that opened it; one from a finished loop is dropped.
            client = self._client_factory()
            one_csrf_fetch(client)
            async with self._guard():
                await client.__aenter__()
            self._client, self._client_loop = client, loop
            self._entries.clear()
        return self._client

    @asynccontextmanager
    async def _guard(self) -> AsyncIterator[None]:
        """Turn transport failures and slow answers into `PrefectUnavailable`."""
        try:
            with anyio.fail_after(self.timeout_s):
                yield
        except TimeoutError as err:
            raise PrefectUnavailable(
                f"The Prefect API at {self.api_url} did not answer within {self.timeout_s:.0f} s."
            ) from err
        except httpx.TransportError as err:
            raise PrefectUnavailable(
                f"The Prefect API at {self.api_url} is unreachable: {err}."
            ) from err
        except httpx.HTTPStatusError as err:
            if err.response.status_code < 500:
                raise
            raise PrefectUnavailable(
                f"The Prefect API at {self.api_url} failed: HTTP {err.response.status_code}."
            ) from err

    async def call(self, make: Callable[[PrefectClient], Awaitable[T]]) -> T:
        """One Prefect query, counted, with the client's errors translated."""
        client = await self._get_client()
        self.prefect_queries += 1
        async with self._guard():
            return await make(client)

    async def healthcheck(self) -> None:
        """Raise `PrefectUnavailable` unless the Prefect API answers."""
        error = await self.call(lambda c: c.api_healthcheck())
        if error is not None:
            raise PrefectUnavailable(f"The Prefect API at {self.api_url} is unreachable: {error}.")

    # --- reading ---------------------------------------------------------------------

    async def _flow_name(self, flow_id: UUID) -> str:
        name = self._flow_names.get(flow_id)
        if name is None:
            flow = await self.call(lambda c: c.read_flow(flow_id))
            name = self._flow_names[flow_id] = flow.name
        return name

    async def _session_run(self, session_id: UUID, run: FlowRun | None) -> FlowRun:
        """`run` if it is the session `session_id` (an `index-photos` run), else 404."""
        if run is None:
            raise SessionNotFound(f"Session not found: {session_id}")
        if await self._flow_name(run.flow_id) != SESSION_FLOW:
            raise SessionNotFound(f"Session not found: {session_id} is not an {SESSION_FLOW} run")
        return run

    async def _read_parent(self, session_id: UUID) -> FlowRun:
        try:
            parent = await self.call(lambda c: c.read_flow_run(session_id))
        except ObjectNotFound:
            return await self._session_run(session_id, None)
        return await self._session_run(session_id, parent)

    async def _read_children(self, session_id: UUID) -> list[FlowRun]:
        flt = FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[session_id]))
        return await self.call(lambda c: c.read_flow_runs(flow_run_filter=flt))

    async def _read_runs(self, session_id: UUID) -> tuple[FlowRun, list[FlowRun]]:
        """The session's run and its phase runs, in one request."""
        runs = await self.call(
            lambda c: c.read_flow_runs(flow_run_filter=_session_and_phases(session_id))
        )
        parent = next((run for run in runs if run.id == session_id), None)
        parent = await self._session_run(session_id, parent)
        return parent, [run for run in runs if run.id != session_id]

    async def _read_artifacts(self, session_id: UUID) -> list[Artifact]:
        """The progress artifacts of the session's phase runs and of the session itself."""
        runs = _session_and_phases(session_id)
        artifacts = ArtifactFilter(
            type=ArtifactFilterType(any_=["progress"]),
            key=ArtifactFilterKey(any_=[*(p.artifact for p in BY_CONTRACT.values()),
                                        SESSION_ARTIFACT]),
        )  # fmt: skip
        return await self.call(
            lambda c: c.read_artifacts(
                artifact_filter=artifacts, flow_run_filter=runs, sort=ArtifactSort.UPDATED_DESC
            )
        )

    async def _phases_of(self, session_id: UUID) -> Phases:
        """The latest run of each phase under a session, each one's latest artifact, and
        the session's own artifact (under the key `session`)."""
        cached = self._ended.get(session_id)
        if cached is not None:
            return cached
        children, artifacts = await asyncio.gather(
            self._read_children(session_id), self._read_artifacts(session_id)
        )
        return await self._phases_from(session_id, children, artifacts)

    async def _phases_from(
        self, session_id: UUID, children: Sequence[FlowRun], artifacts: Sequence[Artifact]
    ) -> Phases:
        phase_runs: dict[str, FlowRun] = {}
        for run in sorted(children, key=lambda r: utc(r.created) or EPOCH):
            spec = BY_FLOW.get(await self._flow_name(run.flow_id))
            if spec is not None:
                phase_runs[spec.contract] = run
        latest = latest_artifacts(phase_runs, artifacts)
        own = [a for a in artifacts if a.key == SESSION_ARTIFACT and a.flow_run_id == session_id]
        if own:
            latest["session"] = own[0]
        return phase_runs, latest

    async def _phases_of_run(self, parent: FlowRun) -> Phases:
        """`_phases_of`, remembered once the session and all its phase runs have ended."""
        phases = await self._phases_of(parent.id)
        if _ended(parent) and all(_ended(run) for run in phases[0].values()):
            self._ended.put(parent.id, phases)
        return phases

    async def _fetch(self, session_id: UUID) -> _Raw:
        """The session's runs and artifacts: two requests (one once it has ended)."""
        cached = self._ended.get(session_id)
        if cached is not None:
            return _Raw(await self._read_parent(session_id), *cached)
        (parent, children), artifacts = await asyncio.gather(
            self._read_runs(session_id), self._read_artifacts(session_id)
        )
        phase_runs, latest = await self._phases_from(session_id, children, artifacts)
        if _ended(parent) and all(_ended(run) for run in phase_runs.values()):
            self._ended.put(session_id, (phase_runs, latest))
        return _Raw(parent, phase_runs, latest)

    async def _raw(self, session_id: UUID) -> _Raw:
        """The session's Prefect data, shared by all callers; one fetch per session at a time.

        Data younger than the TTL is served as is. Older data, up to `STALE_FACTOR` TTLs,
        is served while one background fetch refreshes it, so pollers never wait on Prefect
        once a session is warm. Anything older is fetched before answering.
        """
        if self.cache_ttl_s <= 0:
            return await self._fetch(session_id)
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        entry = self._entries.get(session_id)
        if entry is None or entry.loop is not loop:
            if len(self._entries) > 512:
                self._entries = {
                    k: v for k, v in self._entries.items()
                    if v.loop is loop and now - v.fetched_at < STALE_FACTOR * self.cache_ttl_s
                }
            entry = self._entries[session_id] = _Entry(loop)
        if entry.value is not None:
            age = now - entry.fetched_at
            if age <= self.cache_ttl_s:
                return entry.value
            if age <= STALE_FACTOR * self.cache_ttl_s:
                self._refresh(session_id, entry)
                return entry.value
        return await asyncio.shield(self._refresh(session_id, entry))

    def _refresh(self, session_id: UUID, entry: _Entry) -> asyncio.Task[_Raw]:
        """The entry's fetch in flight, starting one if none is."""
        if entry.task is not None:
            return entry.task
        started = time.monotonic()
        task = entry.loop.create_task(self._fetch(session_id))

        def done(finished: asyncio.Task[_Raw]) -> None:
            entry.task = None
            if finished.cancelled():
                return
            error = finished.exception()
            if error is None:
                entry.value, entry.fetched_at = finished.result(), started
            elif isinstance(error, PrefectUnavailable | SessionNotFound):
                entry.value = None  # never serve data Prefect can no longer confirm
                logger.debug("refresh of session %s failed: %s", session_id, error)

        task.add_done_callback(done)
        entry.task = task
        return task

    def invalidate(self, session_id: UUID) -> None:
        """Forget the cached data of a session (after changing it)."""
        self._entries.pop(session_id, None)

    async def _session_weights(self, parent: FlowRun) -> Weights:
        """The session's weights: fixed once it has started, from sessions done before that."""
        return (await self._weights_of([parent]))[parent.id]

    async def _weights_of(self, parents: Sequence[FlowRun]) -> dict[UUID, Weights]:
        """Weights of several sessions, with one query for all their calibrations."""
        out: dict[UUID, Weights] = {}
        todo: list[tuple[FlowRun, datetime]] = []
        now = datetime.now(UTC)
        for parent in parents:
            cached = self._weights.get(parent.id)
            if cached is not None:
                out[parent.id] = cached
            else:
                todo.append((parent, utc(parent.start_time) or now))
        if not todo:
            return out
        history = await self._completed_before(todo)
        calibrations = await asyncio.gather(
            *(self._calibrate(_previous(history, p.id, before, self.calibration_sessions),
                              launch_route(p.tags))
              for p, before in todo)
        )
        for (parent, _), calibration in zip(todo, calibrations, strict=True):
            weights = session_weights(calibration, bool(parent.parameters.get("faces", True)))
            if parent.start_time is not None:
                self._weights.put(parent.id, weights)
            out[parent.id] = weights
        return out

    async def _completed_before(
        self, sessions: Sequence[tuple[FlowRun, datetime]]
    ) -> list[FlowRun]:
        """Completed sessions, latest end first, enough to calibrate each of `sessions`."""
        if self.calibration_sessions <= 0:
            return []
        latest = max(before for _, before in sessions)
        names = FlowFilter(name=FlowFilterName(any_=[SESSION_FLOW]))
        flt = FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.COMPLETED])),
            end_time=FlowRunFilterEndTime.model_validate({"before_": latest}),
        )
        page = min(self.calibration_sessions + len(sessions), PREFECT_PAGE)

        async def read(offset: int) -> list[FlowRun]:
            return await self.call(
                lambda c: c.read_flow_runs(
                    flow_filter=names,
                    flow_run_filter=flt,
                    sort=FlowRunSort.END_TIME_DESC,
                    limit=page,
                    offset=offset,
                )
            )

        history: list[FlowRun] = []
        while True:
            runs = await read(len(history))
            history.extend(runs)
            enough = all(
                len(_previous(history, p.id, before, self.calibration_sessions))
                >= self.calibration_sessions
                for p, before in sessions
            )
            if len(runs) < page or enough:
                return history

    async def _calibrate(self, previous: Sequence[FlowRun], route: str) -> Calibration:
        """The calibration of a session started by `route`, from these finished sessions."""
        per_parent = await asyncio.gather(*(self._phases_of_run(run) for run in previous))
        return calibrate(previous, per_parent, route)

    async def snapshot(self, session_id: UUID) -> tuple[SessionSnapshot, Weights, _Raw]:
        """The session as the calculation sees it, with its fixed weights."""
        raw = await self._raw(session_id)
        weights = await self._session_weights(raw.parent)
        return self._snapshot_of(raw), weights, raw

    def _snapshot_of(self, raw: _Raw) -> SessionSnapshot:
        phases = {
            key: PhaseSnapshot(
                run=run_state(raw.children[key]) if key in raw.children else None,
                counts=counts_of(raw.artifacts.get(key)),
                artifact_updated=utc(raw.artifacts[key].updated) if key in raw.artifacts else None,
            )
            for key in PHASES
        }
        session_id = raw.parent.id
        return SessionSnapshot(
            session_id=session_id,
            parent=run_state(raw.parent),
            faces=bool(raw.parent.parameters.get("faces", True)),
            phases=phases,
            now=datetime.now(UTC),
            stall_after_s=self.settings.stall_after_s,
            fail_after_s=self.settings.fail_after_s,
            folder=_folder(raw.parent),
            pause_requested=PAUSE_TAG in raw.parent.tags,
            cancel_requested=CANCEL_TAG in raw.parent.tags,
            floor_percentage=self._floors.get(session_id, 0.0),
            session=counts_of(raw.artifacts.get("session")),
            launch=launch_route(raw.parent.tags),
        )

    def progress_of(self, raw: _Raw, weights: Weights) -> UnifiedProgressResponse:
        """The unified progress of fetched data; it also raises the session's floor."""
        response = compute_progress(self._snapshot_of(raw), weights)
        floor = self._floors.get(raw.parent.id, 0.0)
        self._floors.put(raw.parent.id, max(floor, response.overall_progress.percentage))
        return response

    async def unified(self, session_id: UUID) -> UnifiedProgressResponse:
        """The unified progress of a session."""
        raw = await self._raw(session_id)
        return self.progress_of(raw, await self._session_weights(raw.parent))

    async def training(self, session_id: UUID) -> TrainingProgressResponse:
        """The phase-1-only progress of a session."""
        return training_progress(await self.unified(session_id))

    async def face_session(self, session_id: UUID) -> FaceSessionResponse:
        """The face phases of a session, combined."""
        return face_session(await self.unified(session_id))

    async def list_sessions(self, limit: int = 20) -> list[SessionSummary]:
        """Recent sessions, newest first; future scheduled runs are left out."""
        names = FlowFilter(name=FlowFilterName(any_=[SESSION_FLOW]))
        flt = FlowRunFilter(
            expected_start_time=FlowRunFilterExpectedStartTime.model_validate(
                {"before_": datetime.now(UTC)}
            )
        )
        runs = await self.call(
            lambda c: c.read_flow_runs(
                flow_filter=names,
                flow_run_filter=flt,
                sort=FlowRunSort.EXPECTED_START_TIME_DESC,
                limit=limit,
            )
        )
        parents = [run for run in runs if run.parent_task_run_id is None]
        phases, weights = await asyncio.gather(
            asyncio.gather(*(self._phases_of_run(run) for run in parents)),
            self._weights_of(parents),
        )
        out: list[SessionSummary] = []
        for run, (children, artifacts) in zip(parents, phases, strict=True):
            progress = self.progress_of(_Raw(run, children, artifacts), weights[run.id])
            out.append(
                SessionSummary(
                    session_id=run.id,
                    name=run.name,
                    folder=_folder(run),
                    skip_face_detection=not bool(run.parameters.get("faces", True)),
                    status=progress.overall_status,
                    percentage=progress.overall_progress.percentage,
                    created_at=utc(run.created),
                    started_at=utc(run.start_time),
                    completed_at=utc(run.end_time),
                )
            )
        return out


def _session_and_phases(session_id: UUID) -> FlowRunFilter:
    """The session's own run and its phase runs."""
    return FlowRunFilter.model_validate(
        {
            "operator": Operator.or_,
            "id": FlowRunFilterId(any_=[session_id]),
            "parent_flow_run_id": FlowRunFilterParentFlowRunId(any_=[session_id]),
        }
    )


def _folder(run: FlowRun) -> str | None:
    """The folder a session indexes, from its parameters."""
    folder = run.parameters.get("folder")
    return None if folder is None else str(folder)


_default: PrefectReader | None = None


def default_reader() -> PrefectReader:
    """The process's shared reader."""
    global _default
    if _default is None:
        _default = PrefectReader()
    return _default


async def get_unified_progress(session_id: UUID) -> UnifiedProgressResponse:
    """The unified progress of a session, outside FastAPI too (the CLI's progress bar)."""
    reader = default_reader()
    async with reader.connected():
        return await reader.unified(session_id)
