"""The cluster phase: all faces of the current face model, grouped into persons
(`tasks.clustering` computes the groups), with stable person ids across runs."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from photoindex.settings import Settings
from tasks.catalog import now_utc
from tasks.clustering import NEIGHBOURS, cluster_embeddings, stable_person_ids
from tasks.models.registry import face_analyzer
from tasks.phase import BatchOutcome, Phase, Rejection

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class FaceSet:
    """All faces of one face model, identified by a fingerprint of their ids."""

    fingerprint: str
    count: int


@dataclass
class Embeddings:
    face_ids: list[str]
    vectors: np.ndarray
    fingerprint: str


@dataclass
class Clusters:
    face_ids: list[str]
    labels: np.ndarray
    strengths: np.ndarray
    fingerprint: str


class ClusterPhase(Phase[FaceSet, Embeddings, Clusters]):
    """Cluster all faces of the current face model into persons."""

    name = "cluster"
    batch_size = 1

    def __init__(self, settings: Settings | None = None) -> None:
        super().__init__(settings)
        self.face_model = face_analyzer(self.settings).model_id

    @property
    def model_id(self) -> str:
        s = self.settings
        return (
            f"hdbscan-knn{NEIGHBOURS}:mcs={s.cluster_min_cluster_size}:eps={s.cluster_epsilon}:"
            f"sim={s.cluster_min_similarity}:{self.face_model}"
        )

    def discover(self) -> tuple[Sequence[FaceSet], Sequence[Rejection]]:
        rows = self.catalog.query(
            "SELECT face_id FROM faces WHERE model = ? ORDER BY face_id", (self.face_model,)
        )
        digest = hashlib.sha256("\n".join(r["face_id"] for r in rows).encode()).hexdigest()
        return [FaceSet(fingerprint=digest[:24], count=len(rows))], []

    def key(self, item: FaceSet) -> str:
        return item.fingerprint

    def read(self, batch: Sequence[FaceSet]) -> Embeddings:
        table = self.catalog.faces_for_model(self.face_model)
        ids = [str(v) for v in table.column("face_id").to_pylist()]
        vectors = (
            np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)
            if ids
            else np.zeros((0, 0), dtype=np.float32)
        )
        return Embeddings(ids, vectors, batch[0].fingerprint)

    def compute(self, batch: Embeddings) -> Clusters:
        s = self.settings
        labels, strengths = cluster_embeddings(
            batch.vectors, s.cluster_min_cluster_size, s.cluster_epsilon, s.cluster_min_similarity
        )
        return Clusters(batch.face_ids, labels, strengths, batch.fingerprint)

    def write(self, result: Clusters) -> BatchOutcome:
        previous = {
            r["face_id"]: r["person_id"]
            for r in self.catalog.query("SELECT face_id, person_id FROM person_faces")
        }
        members: dict[int, list[str]] = {}
        for fid, label in zip(result.face_ids, result.labels.tolist(), strict=True):
            if label >= 0:
                members.setdefault(int(label), []).append(fid)
        names = stable_person_ids(members, previous)
        strength = dict(zip(result.face_ids, result.strengths.tolist(), strict=True))
        person_faces: list[dict[str, Any]] = []
        persons: list[dict[str, Any]] = []
        updated = now_utc()
        for label, fids in members.items():
            person_faces += [
                {"face_id": f, "person_id": names[label], "probability": strength[f]} for f in fids
            ]
            persons.append(
                {
                    "person_id": names[label],
                    "face_count": len(fids),
                    "representative_face_id": max(fids, key=lambda f: (strength[f], f)),
                    "model": self.face_model,
                    "fingerprint": result.fingerprint,
                    "updated_at": updated,
                }
            )
        self.catalog.replace_people(persons, person_faces)
        logger.info("%d faces -> %d persons", len(result.face_ids), len(persons))
        return BatchOutcome(
            [self.status(result.fingerprint, f"{len(result.face_ids)} faces", "indexed")]
        )
