"""The vector store: Qdrant's own engine embedded (qdrant-edge-py), or a Qdrant server by URL.

One interface (`VectorStore`) over two backends: `EdgeBackend`, one EdgeShard per
collection under `qdrant_dir/shards/`, the default; `ServerBackend`, qdrant-client talking
to `PHOTOINDEX_QDRANT_URL`. Nothing outside this module knows which one runs. A folder
written by qdrant-client's local mode (before edge) is migrated on first use
(`tasks.vectors_edge.migrate_local_mode`).
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from photoindex.settings import Settings, get_settings

logger = logging.getLogger(__name__)

_POINT_NAMESPACE = uuid.UUID("6f1c9a8e-2d4b-4e1f-9c3a-5b7d8e9f0a1b")
_backends: dict[str, Backend] = {}
_backends_lock = threading.Lock()

TAKEN_AT = "taken_at"
"""Payload key of the capture time: naive ISO wall-clock time, e.g. 2021-07-04T15:30:00."""
INDEX_MIN_UNINDEXED = 10_000
"""Build HNSW once this many points are searched by exact scan (measured: an exact scan of
20k 512-d points is 5-10 ms; building HNSW for them blocks about 40 s)."""
HNSW_EF = 256
"""Candidates an HNSW search keeps (Qdrant's default is ef_construct, 100). Measured with
`bench.bench_vectors --efs` on 10k clustered 512-d vectors: recall@10 0.973 at 128, 0.994
at 256 for 0.4 ms more p99; 1.000 at 100k with p99 8.3 ms."""
SESSION_WAIT_S = 120.0
"""How long a session waits for an embedded store that the API holds between searches."""
RETRY_S = 0.05
"""Poll interval while another process holds a shard (a second open fails at once)."""


class VectorStoreBusy(RuntimeError):
    """The embedded vector store is held by another process."""


def point_id(sha256: str) -> str:
    """The deterministic point id of an image's content."""
    return str(uuid.uuid5(_POINT_NAMESPACE, sha256))


def collection_name(model_id: str) -> str:
    """One collection per CLIP model, since widths and spaces differ."""
    return "images-" + hashlib.sha256(model_id.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class SearchFilter:
    """Which points a search may return; every field left empty means no restriction."""

    after: datetime | None = None
    """Captured at or after this wall-clock time."""
    before: datetime | None = None
    """Captured before this wall-clock time."""
    only: frozenset[str] | None = None
    """Only these images (sha256), e.g. the photos of one person."""
    exclude: frozenset[str] = frozenset()
    """Never these images (sha256), e.g. the photo a "more like this" starts from."""


@dataclass(frozen=True)
class Hit:
    """One search result."""

    path: str
    score: float
    payload: dict[str, Any]


#: Points read back by id: payload and vector.
Stored = dict[str, tuple[dict[str, Any], np.ndarray]]
#: A backend's search results: point id, score, payload.
Scored = list[tuple[str, float, dict[str, Any]]]


def stored(points: Iterable[tuple[Any, Any, Any]]) -> Stored:
    """A backend's (id, payload, vector) records as `Stored`."""
    return {
        str(pid): (dict(payload or {}), np.asarray(vector, dtype=np.float32))
        for pid, payload, vector in points
    }


class Backend(Protocol):
    """What a vector-store engine offers the store; ids are point ids (UUID strings)."""

    def prepare(self, wait_s: float) -> None: ...
    def collections(self) -> list[str]: ...
    def exists(self, name: str) -> bool: ...
    def open(self, name: str, wait_s: float) -> None: ...
    def create(self, name: str, dim: int, model_id: str) -> None: ...
    def upsert(
        self, name: str, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[Any]
    ) -> None: ...
    def delete(self, name: str, ids: Sequence[str]) -> None: ...
    def set_payloads(self, name: str, payloads: Mapping[str, dict[str, Any]]) -> None: ...
    def scroll(self, name: str, missing: str | None = None) -> dict[str, dict[str, Any]]: ...
    def count(self, name: str) -> int: ...
    def retrieve(self, name: str, ids: Sequence[str]) -> Stored: ...
    def query(
        self, name: str, vector: np.ndarray, k: int, where: SearchFilter, min_score: float | None
    ) -> Scored: ...
    def unindexed(self, name: str) -> int: ...
    def optimize(self, name: str) -> bool: ...
    def close(self) -> None: ...


class ReopenableBackend:
    """A backend whose `close` only releases what it holds; it opens again on use."""


def _where(settings: Settings) -> str:
    return settings.qdrant_url or str(settings.qdrant_dir.resolve())


def get_backend(settings: Settings | None = None) -> Backend:
    """The process's one backend for these settings (opening one takes no lock yet)."""
    settings = settings or get_settings()
    where = _where(settings)
    with _backends_lock:
        backend = _backends.get(where)
        if backend is None:
            if settings.qdrant_url:
                from tasks.vectors_server import ServerBackend

                backend = ServerBackend(settings.qdrant_url)
            else:
                from tasks.vectors_edge import EdgeBackend

                backend = EdgeBackend(Path(where))
            if not _backends:
                atexit.register(close_clients)  # close before interpreter teardown, quietly
            _backends[where] = backend
        return backend


def close_clients() -> None:
    """Close every open store of this process, releasing the embedded store's folder locks.

    An embedded backend stays registered (closed): a store still holding it reopens its shard
    on next use, through the process's one backend for that folder, never a second one (a
    second open of a shard fails even within one process).
    """
    with _backends_lock:
        for where, backend in list(_backends.items()):
            backend.close()
            if not isinstance(backend, ReopenableBackend):
                del _backends[where]


def stored_points(
    settings: Settings | None = None, wait_s: float = 0.0
) -> dict[str, dict[str, dict[str, Any]]]:
    """Every collection's points: collection -> point id -> payload."""
    backend = get_backend(settings)
    backend.prepare(wait_s)
    found: dict[str, dict[str, dict[str, Any]]] = {}
    for name in backend.collections():
        backend.open(name, wait_s)
        found[name] = backend.scroll(name)
    return found


def optimize_if_worth_it(
    settings: Settings | None = None, wait_s: float = SESSION_WAIT_S
) -> list[str]:
    """Build HNSW for each collection that gained many points; the collections indexed.

    Call it once at the end of a session (it blocks: about 40 s for 20k new points),
    never while one writes. The embedded store is closed after it, releasing its lock.
    A Qdrant server optimizes by itself: nothing to do there.
    """
    settings = settings or get_settings()
    backend = get_backend(settings)
    try:
        backend.prepare(wait_s)
        return _optimize(backend, wait_s)
    except VectorStoreBusy as err:  # searches kept it: the next session indexes instead
        logger.warning("search index not built: %s", err)
        return []
    finally:
        if not settings.qdrant_url:
            close_clients()


def _optimize(backend: Backend, wait_s: float) -> list[str]:
    done: list[str] = []
    for name in backend.collections():
        backend.open(name, wait_s)
        pending = backend.unindexed(name)
        if pending < INDEX_MIN_UNINDEXED:
            continue
        started = time.perf_counter()
        if backend.optimize(name):
            done.append(name)
            logger.info(
                "built the search index of %s (%d new points) in %.1f s",
                name, pending, time.perf_counter() - started,
            )  # fmt: skip
    return done


class VectorStore:
    """Image vectors of one CLIP model.

    Opening it opens the model's collection if it exists; while another process holds the
    embedded store, this retries for up to `wait_s`, then raises `VectorStoreBusy`.
    """

    def __init__(
        self, model_id: str, settings: Settings | None = None, wait_s: float = 0.0
    ) -> None:
        self.model_id = model_id
        self.collection = collection_name(model_id)
        self.backend = get_backend(settings)
        self.wait_s = wait_s
        self.backend.prepare(wait_s)
        if self.backend.exists(self.collection):
            self.backend.open(self.collection, wait_s)

    def _exists(self) -> bool:
        return self.backend.exists(self.collection)

    def ensure(self, dim: int) -> None:
        """Create the collection if it does not exist."""
        if not self._exists():
            self.backend.create(self.collection, dim, self.model_id)
        self.backend.open(self.collection, self.wait_s)

    def upsert(self, vectors: np.ndarray, payloads: Sequence[dict[str, Any]]) -> None:
        """Insert or overwrite points; ids come from content, so re-runs never duplicate."""
        if not len(payloads):
            return
        self.ensure(int(vectors.shape[1]))
        ids = [point_id(p["sha256"]) for p in payloads]
        self.backend.upsert(self.collection, ids, vectors, payloads)

    def delete(self, shas: Sequence[str]) -> None:
        """Remove the points of these images."""
        if shas and self._exists():
            self.backend.delete(self.collection, [point_id(h) for h in shas])

    def set_paths(self, paths: dict[str, str]) -> None:
        """Point images (by content) at new paths, without touching their vectors."""
        self.set_payloads({sha: {"path": p} for sha, p in paths.items()})

    def set_payloads(self, fields: Mapping[str, dict[str, Any]]) -> None:
        """Set payload fields of images (by content), keeping their other fields."""
        if fields and self._exists():
            self.backend.set_payloads(
                self.collection, {point_id(sha): f for sha, f in fields.items()}
            )

    def ids(self) -> set[str]:
        """Every point id in the collection."""
        if not self._exists():
            return set()
        return set(self.backend.scroll(self.collection))

    def without(self, key: str) -> dict[str, dict[str, Any]]:
        """The points whose payload lacks `key`: point id -> payload."""
        if not self._exists():
            return {}
        return self.backend.scroll(self.collection, missing=key)

    def count(self) -> int:
        if not self._exists():
            return 0
        return self.backend.count(self.collection)

    def vectors(self, shas: Iterable[str]) -> dict[str, np.ndarray]:
        """The stored (unit) vectors of these images, by sha256; unknown ones are left out."""
        wanted = {point_id(sha): sha for sha in shas}
        if not wanted or not self._exists():
            return {}
        found = self.backend.retrieve(self.collection, list(wanted))
        return {wanted[pid]: vector for pid, (_, vector) in found.items()}

    def payloads(self, shas: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The stored payloads of these images, by sha256; unknown ones are left out."""
        wanted = {point_id(sha): sha for sha in shas}
        if not wanted or not self._exists():
            return {}
        found = self.backend.retrieve(self.collection, list(wanted))
        return {wanted[pid]: payload for pid, (payload, _) in found.items()}

    def search(
        self,
        vector: np.ndarray,
        k: int,
        where: SearchFilter | None = None,
        min_score: float | None = None,
    ) -> Scored:
        """The k nearest images that pass `where`, scoring at least `min_score`:
        (path, cosine score, payload), best first."""
        if not self._exists():
            return []
        where = where or SearchFilter()
        if where.only is not None and not where.only - where.exclude:
            return []
        hits = self.backend.query(
            self.collection, np.asarray(vector, dtype=np.float32), k, where, min_score
        )
        return [(str(payload["path"]), score, payload) for _, score, payload in hits]

    def optimize_if_worth_it(self) -> bool:
        """Build HNSW if enough points are searched by exact scan (see the module function)."""
        if not self._exists() or self.backend.unindexed(self.collection) < INDEX_MIN_UNINDEXED:
            return False
        return self.backend.optimize(self.collection)


def wall_clock(value: datetime) -> str:
    """A time as the store compares capture times: naive ISO wall-clock time."""
    return value.replace(tzinfo=None).isoformat(timespec="seconds")
