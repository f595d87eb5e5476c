"""The cluster phase: group faces into persons with HDBSCAN."""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import hdbscan
import numpy as np

from photoindex.settings import Settings
from tasks.catalog import now_utc
from tasks.faces import face_analyzer
from tasks.phase import BatchOutcome, Phase, Rejection

logger = logging.getLogger(__name__)

PCA_DIMS = 50  # HDBSCAN's maintainers advise about 40-50 dimensions at scale


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


def l2_normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    unit: np.ndarray = x / np.maximum(norms, 1e-12)
    return unit


def reduce_dims(x: np.ndarray, dims: int = PCA_DIMS) -> np.ndarray:
    """PCA to `dims` when the vectors are wider, then re-normalise."""
    if x.shape[1] <= dims or x.shape[0] <= dims:
        return x
    centred = x - x.mean(axis=0, keepdims=True)
    # Eigen-decomposition of the covariance: memory stays dims x dims, not n x n.
    cov = centred.T @ centred / max(1, x.shape[0] - 1)
    values, vectors = np.linalg.eigh(cov)
    top = vectors[:, np.argsort(values)[::-1][:dims]]
    return l2_normalise(centred @ top)


def cluster_embeddings(
    vectors: np.ndarray,
    min_cluster_size: int = 2,
    epsilon: float = 0.0,
    min_similarity: float = 0.45,
) -> tuple[np.ndarray, np.ndarray]:
    """Person labels (-1 = noise) and membership strengths for face embeddings."""
    n = vectors.shape[0]
    if n < max(2, min_cluster_size):
        return np.full(n, -1, dtype=np.int64), np.zeros(n, dtype=np.float32)
    unit = l2_normalise(vectors.astype(np.float32))
    reduced = reduce_dims(unit)
    model = hdbscan.HDBSCAN(
        min_cluster_size=min_cluster_size,
        min_samples=1,
        metric="euclidean",
        cluster_selection_epsilon=epsilon,
        allow_single_cluster=True,
    )
    labels = np.asarray(model.fit_predict(reduced), dtype=np.int64)
    strengths = np.asarray(model.probabilities_, dtype=np.float32)
    labels = _prune(unit, labels, min_similarity, min_cluster_size)
    strengths[labels < 0] = 0.0
    return labels, strengths


def _prune(
    unit: np.ndarray, labels: np.ndarray, min_similarity: float, min_size: int
) -> np.ndarray:
    """Drop members whose best cosine to the rest of their cluster is too low."""
    labels = labels.copy()
    for label in np.unique(labels[labels >= 0]):
        members = np.flatnonzero(labels == label)
        sims = unit[members] @ unit[members].T
        np.fill_diagonal(sims, -1.0)
        labels[members[sims.max(axis=1) < min_similarity]] = -1
        if np.count_nonzero(labels == label) < min_size:
            labels[labels == label] = -1
    return labels


def stable_person_ids(clusters: dict[int, list[str]], previous: dict[str, str]) -> dict[int, str]:
    """Name each cluster: keep an earlier person id when most members carry it."""
    names: dict[int, str] = {}
    taken: set[str] = set()
    for label, members in sorted(clusters.items(), key=lambda kv: -len(kv[1])):
        votes = Counter(previous[f] for f in members if f in previous)
        best = next((pid for pid, n in votes.most_common() if pid not in taken), None)
        if best is not None and votes[best] * 2 > len(members):
            names[label] = best
        else:
            digest = hashlib.sha256("\n".join(sorted(members)).encode()).hexdigest()
            names[label] = "person-" + digest[:10]
        taken.add(names[label])
    return names


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
            f"hdbscan:mcs={s.cluster_min_cluster_size}:eps={s.cluster_epsilon}:"
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
        self.catalog.replace("person_faces", person_faces)
        self.catalog.replace("persons", persons)
        logger.info("%d faces -> %d persons", len(result.face_ids), len(persons))
        return BatchOutcome(
            [self.status(result.fingerprint, f"{len(result.face_ids)} faces", "indexed")]
        )
