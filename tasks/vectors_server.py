"""The vector store on a Qdrant server, through qdrant-client (`PHOTOINDEX_QDRANT_URL`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from qdrant_client import QdrantClient, models

from tasks.vectors import HNSW_EF, TAKEN_AT, Scored, SearchFilter, Stored, point_id, stored

_SCROLL = 1000


class ServerBackend:
    """Collections on a Qdrant server; the server indexes and locks by itself."""

    def __init__(self, url_or_client: str | QdrantClient) -> None:
        self.client = (
            QdrantClient(url=url_or_client) if isinstance(url_or_client, str) else url_or_client
        )

    def prepare(self, wait_s: float) -> None:
        """Nothing to migrate on a server."""

    def collections(self) -> list[str]:
        return sorted(c.name for c in self.client.get_collections().collections)

    def exists(self, name: str) -> bool:
        return self.client.collection_exists(name)

    def open(self, name: str, wait_s: float) -> None:
        """A server has no folder lock: nothing to open."""

    def create(self, name: str, dim: int, model_id: str) -> None:
        if self.client.collection_exists(name):
            return
        self.client.create_collection(
            name,
            vectors_config=models.VectorParams(size=dim, distance=models.Distance.COSINE),
            metadata={"model": model_id},
        )
        self.client.create_payload_index(name, TAKEN_AT, models.PayloadSchemaType.DATETIME)

    def close(self) -> None:
        self.client.close()

    def upsert(
        self, name: str, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[Any]
    ) -> None:
        rows = np.asarray(vectors, dtype=np.float32).tolist()
        self.client.upsert(
            name,
            points=[
                models.PointStruct(id=i, vector=v, payload=dict(p))
                for i, v, p in zip(ids, rows, payloads, strict=True)
            ],
        )

    def delete(self, name: str, ids: Sequence[str]) -> None:
        self.client.delete(name, points_selector=models.PointIdsList(points=list(ids)))

    def set_payloads(self, name: str, payloads: Mapping[str, dict[str, Any]]) -> None:
        self.client.batch_update_points(
            name,
            update_operations=[
                models.SetPayloadOperation(
                    set_payload=models.SetPayload(payload=fields, points=[pid])
                )
                for pid, fields in payloads.items()
            ],
        )

    def scroll(self, name: str, missing: str | None = None) -> dict[str, dict[str, Any]]:
        where = (
            models.Filter(
                must=[models.IsEmptyCondition(is_empty=models.PayloadField(key=missing))]
            )
            if missing
            else None
        )
        found: dict[str, dict[str, Any]] = {}
        offset: Any = None
        while True:
            batch, offset = self.client.scroll(
                name, scroll_filter=where, limit=_SCROLL, offset=offset,
                with_payload=True, with_vectors=False,
            )  # fmt: skip
            found.update({str(p.id): dict(p.payload or {}) for p in batch})
            if offset is None:
                return found

    def count(self, name: str) -> int:
        return self.client.count(name, exact=True).count

    def retrieve(self, name: str, ids: Sequence[str]) -> Stored:
        points = self.client.retrieve(name, ids=list(ids), with_payload=True, with_vectors=True)
        return stored((p.id, p.payload, p.vector) for p in points)

    def query(
        self, name: str, vector: np.ndarray, k: int, where: SearchFilter, min_score: float | None
    ) -> Scored:
        hits = self.client.query_points(
            name,
            query=vector.tolist(),
            limit=k,
            query_filter=_filter(where),
            score_threshold=min_score,
            search_params=models.SearchParams(hnsw_ef=HNSW_EF),
            with_payload=True,
        ).points
        return [(str(h.id), float(h.score), dict(h.payload or {})) for h in hits]

    def unindexed(self, name: str) -> int:
        return 0  # the server's optimizers index in the background

    def optimize(self, name: str) -> bool:
        return False


def _filter(where: SearchFilter) -> models.Filter | None:
    must: list[models.Condition] = []
    must_not: list[models.Condition] = []
    if where.after is not None or where.before is not None:
        must.append(
            models.FieldCondition(
                key=TAKEN_AT,
                range=models.DatetimeRange(
                    gte=where.after.replace(tzinfo=None) if where.after else None,
                    lt=where.before.replace(tzinfo=None) if where.before else None,
                ),
            )
        )
    if where.only is not None:
        must.append(models.HasIdCondition(has_id=[point_id(s) for s in sorted(where.only)]))
    if where.exclude:
        must_not.append(models.HasIdCondition(has_id=[point_id(s) for s in sorted(where.exclude)]))
    if not must and not must_not:
        return None
    return models.Filter(must=must or None, must_not=must_not or None)
