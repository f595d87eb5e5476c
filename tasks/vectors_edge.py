"""The embedded vector store: one qdrant-edge-py shard per collection, in a local folder.

Layout under `qdrant_dir`: `shards/<collection>/` (an EdgeShard: `edge_config.json`,
`segments/`, `wal/`). A folder that qdrant-client's local mode wrote (`meta.json` and
`collection/`) is copied into shards on first use, with its ids, vectors and payloads;
local mode's files are then moved to `local-mode-backup/`.

A shard is locked by the process that opened it: a second open, in another process or
in this one, fails at once ("WouldBlock"), so opening polls until `wait_s` runs out.
Threads of one process share the open shard.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from qdrant_edge import (
    CountRequest,
    Distance,
    EdgeConfig,
    EdgeShard,
    EdgeVectorParams,
    FieldCondition,
    Filter,
    HasIdCondition,
    IsEmptyCondition,
    PayloadSchemaType,
    Point,
    Query,
    QueryRequest,
    RangeDateTime,
    ScrollRequest,
    SearchParams,
    UpdateOperation,
)

from tasks.vectors import (
    HNSW_EF,
    RETRY_S,
    TAKEN_AT,
    ReopenableBackend,
    Scored,
    SearchFilter,
    Stored,
    VectorStoreBusy,
    point_id,
    stored,
    wall_clock,
)

logger = logging.getLogger(__name__)

SHARDS = "shards"
LOCAL_MODE_BACKUP = "local-mode-backup"
_CONFIG = "edge_config.json"
_SCROLL = 1000


def _would_block(err: Exception) -> bool:
    return "WouldBlock" in str(err)


def _busy(path: Path) -> VectorStoreBusy:
    return VectorStoreBusy(
        f"the local vector store at {path} is in use by another process "
        "(an index run or `photoindex serve`); wait for it to finish, or run "
        "a Qdrant server and set PHOTOINDEX_QDRANT_URL"
    )


def _load(path: Path) -> EdgeShard:
    """Open a shard; VectorStoreBusy if another holder has it."""
    try:
        return EdgeShard.load(str(path))
    # qdrant-edge-py raises plain Exception for every error; only a held lock is expected.
    except Exception as err:
        if _would_block(err):
            raise _busy(path) from err
        raise


def new_shard(path: Path, dim: int) -> EdgeShard:
    """A new cosine shard at `path`, with the capture-time index the date filters use."""
    shard = EdgeShard.create(str(path), EdgeConfig(vectors=EdgeVectorParams(dim, Distance.Cosine)))
    shard.update(UpdateOperation.create_field_index(TAKEN_AT, PayloadSchemaType.Datetime))
    return shard


def _install(tmp: Path, dest: Path) -> None:
    """Move a finished (closed) shard into place, unless another process got there first."""
    try:
        os.rename(tmp, dest)
    except OSError as err:
        if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise
        shutil.rmtree(tmp)


class EdgeBackend(ReopenableBackend):
    """Shards under `root/shards`, opened lazily, kept open until `close` (then reopened
    lazily on the next use)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.shards_dir = root / SHARDS
        self._open: dict[str, EdgeShard] = {}
        self._lock = threading.RLock()
        self._migrated = False

    def _path(self, name: str) -> Path:
        return self.shards_dir / name

    # opening -------------------------------------------------------------------
    def prepare(self, wait_s: float) -> None:
        """Migrate a local-mode folder once (waiting up to `wait_s` for its lock)."""
        if self._migrated:
            return
        deadline = time.monotonic() + wait_s
        while True:
            with self._lock:
                if self._migrated:
                    return
                try:
                    migrate_local_mode(self.root)
                except VectorStoreBusy:
                    if time.monotonic() >= deadline:
                        raise
                else:
                    self._migrated = True
                    return
            time.sleep(RETRY_S * 5)

    def collections(self) -> list[str]:
        if not self.shards_dir.is_dir():
            return []
        return sorted(
            p.name
            for p in self.shards_dir.iterdir()
            if not p.name.startswith(".") and (p / _CONFIG).is_file()
        )

    def exists(self, name: str) -> bool:
        return name in self._open or (self._path(name) / _CONFIG).is_file()

    def open(self, name: str, wait_s: float) -> None:
        deadline = time.monotonic() + wait_s
        while True:
            with self._lock:
                if name in self._open:
                    return
                try:
                    self._open[name] = _load(self._path(name))
                    return
                except VectorStoreBusy:
                    if time.monotonic() >= deadline:
                        raise
            time.sleep(RETRY_S)

    def _shard(self, name: str) -> EdgeShard:
        shard = self._open.get(name)
        if shard is None:
            self.open(name, 0.0)
            shard = self._open[name]
        return shard

    def create(self, name: str, dim: int, model_id: str) -> None:
        with self._lock:
            if self.exists(name):
                return
            self.shards_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.shards_dir / f".new-{name}-{uuid.uuid4().hex[:8]}"
            shard = new_shard(tmp, dim)
            shard.flush()
            shard.close()
            _install(tmp, self._path(name))
            logger.info("created vector collection %s for %s (width %d)", name, model_id, dim)

    def close(self) -> None:
        with self._lock:
            for shard in self._open.values():
                shard.close()
            self._open.clear()

    # writing -------------------------------------------------------------------
    def upsert(
        self, name: str, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[Any]
    ) -> None:
        rows = np.asarray(vectors, dtype=np.float32).tolist()
        points = [Point(i, v, dict(p)) for i, v, p in zip(ids, rows, payloads, strict=True)]
        self._shard(name).update(UpdateOperation.upsert_points(points))

    def delete(self, name: str, ids: Sequence[str]) -> None:
        self._shard(name).update(UpdateOperation.delete_points(list(ids)))

    def set_payloads(self, name: str, payloads: Mapping[str, dict[str, Any]]) -> None:
        shard = self._shard(name)
        for pid, fields in payloads.items():
            shard.update(UpdateOperation.set_payload([pid], fields))

    # reading -------------------------------------------------------------------
    def scroll(self, name: str, missing: str | None = None) -> dict[str, dict[str, Any]]:
        shard = self._shard(name)
        where = Filter(must=[IsEmptyCondition(missing)]) if missing else None
        found: dict[str, dict[str, Any]] = {}
        offset: Any = None
        while True:
            batch, offset = shard.scroll(
                ScrollRequest(
                    offset=offset, limit=_SCROLL, filter=where, with_payload=True,
                    with_vector=False,
                )
            )  # fmt: skip
            found.update({str(r.id): dict(r.payload or {}) for r in batch})
            if offset is None:
                return found

    def count(self, name: str) -> int:
        return self._shard(name).count(CountRequest(exact=True))

    def retrieve(self, name: str, ids: Sequence[str]) -> Stored:
        records = self._shard(name).retrieve(list(ids), with_payload=True, with_vector=True)
        return stored((r.id, r.payload, r.vector) for r in records)

    def query(
        self, name: str, vector: np.ndarray, k: int, where: SearchFilter, min_score: float | None
    ) -> Scored:
        hits = self._shard(name).query(
            QueryRequest(
                limit=k,
                query=Query.Nearest(vector.tolist()),
                filter=_filter(where),
                score_threshold=min_score,
                with_payload=True,
                with_vector=False,
                params=SearchParams(hnsw_ef=HNSW_EF),
            )
        )
        return [(str(h.id), float(h.score), dict(h.payload or {})) for h in hits]

    # indexing ------------------------------------------------------------------
    def unindexed(self, name: str) -> int:
        info = self._shard(name).info()
        return max(0, info.points_count - info.indexed_vectors_count)

    def optimize(self, name: str) -> bool:
        shard = self._shard(name)
        changed = shard.optimize()
        shard.flush()
        return changed


def _filter(where: SearchFilter) -> Filter | None:
    must: list[Any] = []
    must_not: list[Any] = []
    if where.after is not None or where.before is not None:
        must.append(
            FieldCondition(
                TAKEN_AT,
                range=RangeDateTime(
                    gte=wall_clock(where.after) if where.after else None,
                    lt=wall_clock(where.before) if where.before else None,
                ),
            )
        )
    if where.only is not None:
        must.append(HasIdCondition({point_id(sha) for sha in where.only}))
    if where.exclude:
        must_not.append(HasIdCondition({point_id(sha) for sha in where.exclude}))
    if not must and not must_not:
        return None
    return Filter(must=must or None, must_not=must_not or None)


# migration from qdrant-client's local mode ------------------------------------
def migrate_local_mode(root: Path) -> int:
    """Copy a local-mode folder's collections into shards; the number of points copied.

    Ids, vectors and payloads are copied as stored; nothing is recomputed. Each shard is
    built beside its final place and renamed into it when whole, so an interrupted
    migration is redone from the collections not yet in place. Local mode's own lock is
    held throughout (VectorStoreBusy while another process holds it).
    """
    meta = root / "meta.json"
    if not meta.is_file():
        return 0
    from qdrant_client import QdrantClient

    try:
        client = QdrantClient(path=str(root))
    except RuntimeError as err:  # local mode's folder lock
        raise _busy(root) from err
    try:
        if not meta.is_file():
            return 0  # another process migrated it while this one waited
        copied = sum(_copy_collection(client, c.name, root) for c in _local_collections(client))
        backup = root / LOCAL_MODE_BACKUP
        backup.mkdir(exist_ok=True)
        for part in ("meta.json", "collection"):  # meta.json first: it alone marks local mode
            if (root / part).exists():
                os.replace(root / part, backup / part)
    finally:
        client.close()
    logger.info(
        "migrated %d points from the local-mode vector store in %s (kept in %s)",
        copied, root, root / LOCAL_MODE_BACKUP,
    )  # fmt: skip
    return copied


def _local_collections(client: Any) -> list[Any]:
    return list(client.get_collections().collections)


def _copy_collection(client: Any, name: str, root: Path) -> int:
    dest = root / SHARDS / name
    if (dest / _CONFIG).is_file():
        return 0  # copied by an interrupted migration
    params = client.get_collection(name).config.params.vectors
    if not hasattr(params, "size"):
        raise ValueError(f"collection {name} has named vectors; photoindex never wrote those")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".migrating-{name}-{uuid.uuid4().hex[:8]}"
    shard = new_shard(tmp, int(params.size))
    copied = 0
    offset: Any = None
    try:
        while True:
            batch, offset = client.scroll(
                name, limit=_SCROLL, offset=offset, with_payload=True, with_vectors=True
            )
            if batch:
                points = [Point(str(p.id), list(p.vector), dict(p.payload or {})) for p in batch]
                shard.update(UpdateOperation.upsert_points(points))
                copied += len(batch)
            if offset is None:
                break
        expected = client.count(name, exact=True).count
        if shard.count(CountRequest(exact=True)) != expected:
            raise RuntimeError(f"migrating {name}: copied {copied} of {expected} points")
        shard.flush()
    except BaseException:
        shard.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shard.close()
    _install(tmp, dest)
    return copied
