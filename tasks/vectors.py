"""The vector store: Qdrant in local mode by default, or a server by URL."""

from __future__ import annotations

import atexit
import hashlib
import logging
import threading
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


def get_client(settings: Settings | None = None) -> QdrantClient:
    """The process's one Qdrant client for these settings."""
    settings = settings or get_settings()
    where = settings.qdrant_url or str(settings.qdrant_dir.resolve())
    with _clients_lock:
        client = _clients.get(where)
        if client is None:
            if settings.qdrant_url:
                client = QdrantClient(url=settings.qdrant_url)
            else:
                settings.qdrant_dir.mkdir(parents=True, exist_ok=True)
                try:
                    client = QdrantClient(path=where)
                except RuntimeError as err:
                    raise VectorStoreBusy(
                        f"the local vector store at {where} is in use by another process "
                        "(an index run or `photoindex serve`); wait for it to finish, or run "
                        "a Qdrant server and set PHOTOINDEX_QDRANT_URL"
                    ) from err
            if not _clients:
                atexit.register(close_clients)  # close before interpreter teardown, quietly
            _clients[where] = client
        return client


def close_clients() -> None:
    """Close every client, releasing local-mode locks."""
    with _clients_lock:
        for client in _clients.values():
            client.close()
        _clients.clear()


class VectorStore:
    """Image vectors of one CLIP model."""

    def __init__(self, model_id: str, settings: Settings | None = None) -> None:
        self.model_id = model_id
        self.client = get_client(settings)
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
