"""The vector store: Qdrant in local mode by default, or a server by URL."""

from __future__ import annotations

import atexit
import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
from qdrant_client import QdrantClient, models

from photoindex.settings import Settings, get_settings

logger = logging.getLogger(__name__)

_POINT_NAMESPACE = uuid.UUID("6f1c9a8e-2d4b-4e1f-9c3a-5b7d8e9f0a1b")
_clients: dict[str, QdrantClient] = {}
_clients_lock = threading.Lock()


class VectorStoreBusy(RuntimeError):
    """Local-mode Qdrant is locked by another process."""


def point_id(sha256: str) -> str:
    """The deterministic point id of an image's content."""
    return str(uuid.uuid5(_POINT_NAMESPACE, sha256))


def collection_name(model_id: str) -> str:
    """One collection per CLIP model, since widths and spaces differ."""
    return "images-" + hashlib.sha256(model_id.encode()).hexdigest()[:12]


def get_client(settings: Settings | None = None, wait_s: float = 0.0) -> QdrantClient:
    """The process's one Qdrant client for these settings.

    Local mode locks its folder for one process. With `wait_s`, a busy store is retried
    until then (the API holds it only briefly between searches); then VectorStoreBusy.
    """
    settings = settings or get_settings()
    where = settings.qdrant_url or str(settings.qdrant_dir.resolve())
    deadline = time.monotonic() + wait_s
    while True:
        with _clients_lock:
            client = _clients.get(where)
            if client is not None:
                return client
            try:
                client = _open(settings, where)
            except VectorStoreBusy:
                if time.monotonic() >= deadline:
                    raise
            else:
                if not _clients:
                    atexit.register(close_clients)  # close before interpreter teardown, quietly
                _clients[where] = client
                return client
        time.sleep(0.25)


def _open(settings: Settings, where: str) -> QdrantClient:
    if settings.qdrant_url:
        return QdrantClient(url=settings.qdrant_url)
    settings.qdrant_dir.mkdir(parents=True, exist_ok=True)
    try:
        return QdrantClient(path=where)
    except RuntimeError as err:
        raise VectorStoreBusy(
            f"the local vector store at {where} is in use by another process "
            "(an index run or `photoindex serve`); wait for it to finish, or run "
            "a Qdrant server and set PHOTOINDEX_QDRANT_URL"
        ) from err


def points(client: QdrantClient, collection: str) -> dict[str, dict[str, Any]]:
    """Every point of a collection: id -> payload."""
    found: dict[str, dict[str, Any]] = {}
    offset: Any = None
    while True:
        batch, offset = client.scroll(
            collection, limit=1000, offset=offset, with_payload=True, with_vectors=False
        )
        found.update({str(p.id): dict(p.payload or {}) for p in batch})
        if offset is None:
            return found


def close_clients() -> None:
    """Close every client, releasing local-mode locks."""
    with _clients_lock:
        for client in _clients.values():
            client.close()
        _clients.clear()


class VectorStore:
    """Image vectors of one CLIP model."""

    def __init__(
        self, model_id: str, settings: Settings | None = None, wait_s: float = 0.0
    ) -> None:
        self.model_id = model_id
        self.client = get_client(settings, wait_s)
        self.collection = collection_name(model_id)

    def ensure(self, dim: int) -> None:
        """Create the collection if it does not exist."""
        if not self.client.collection_exists(self.collection):
            self.client.create_collection(
                self.collection,
                vectors_config=models.VectorParams(size=dim, distance=models.Distance.COSINE),
                metadata={"model": self.model_id},
            )

    def upsert(self, vectors: np.ndarray, payloads: Sequence[dict[str, Any]]) -> None:
        """Insert or overwrite points; ids come from content, so re-runs never duplicate."""
        self.ensure(int(vectors.shape[1]))
        self.client.upsert(
            self.collection,
            points=[
                models.PointStruct(id=point_id(p["sha256"]), vector=v.tolist(), payload=p)
                for v, p in zip(vectors, payloads, strict=True)
            ],
        )

    def delete(self, shas: Sequence[str]) -> None:
        """Remove the points of these images."""
        if shas and self.client.collection_exists(self.collection):
            self.client.delete(
                self.collection,
                points_selector=models.PointIdsList(points=[point_id(h) for h in shas]),
            )

    def set_paths(self, paths: dict[str, str]) -> None:
        """Point images (by content) at new paths, without touching their vectors."""
        if not paths or not self.client.collection_exists(self.collection):
            return
        self.client.batch_update_points(
            self.collection,
            update_operations=[
                models.SetPayloadOperation(
                    set_payload=models.SetPayload(payload={"path": p}, points=[point_id(h)])
                )
                for h, p in paths.items()
            ],
        )

    def ids(self) -> set[str]:
        """Every point id in the collection."""
        if not self.client.collection_exists(self.collection):
            return set()
        return set(points(self.client, self.collection))

    def count(self) -> int:
        if not self.client.collection_exists(self.collection):
            return 0
        return self.client.count(self.collection, exact=True).count

    def search(self, vector: np.ndarray, k: int) -> list[tuple[str, float, dict[str, Any]]]:
        """The k nearest images: (path, cosine score, payload)."""
        if not self.client.collection_exists(self.collection):
            return []
        hits = self.client.query_points(
            self.collection, query=vector.astype(np.float32).tolist(), limit=k
        ).points
        return [(str((h.payload or {})["path"]), float(h.score), h.payload or {}) for h in hits]
