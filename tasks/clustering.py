"""Grouping face embeddings into persons: HDBSCAN's clusters, at any number of faces.

Pure: vectors in, labels and strengths out. `tasks.cluster` is the phase around it.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from dataclasses import dataclass

import hdbscan
import numpy as np
from hdbscan import _hdbscan_linkage as hdbscan_linkage
from hdbscan import _hdbscan_tree as hdbscan_tree
from hdbscan import hdbscan_
from scipy import sparse
from scipy.sparse import csgraph

logger = logging.getLogger(__name__)

# HDBSCAN with min_samples=1 is single linkage plus its excess-of-mass cluster selection,
# and single linkage only needs the minimum spanning tree. Up to EXACT_MAX faces HDBSCAN
# builds that tree from every pairwise distance. Beyond, its tree search in 128 dimensions
# takes hours at 100k faces, so the tree comes from a graph of each face's nearest faces
# (found in k-means cells, as FAISS's IVF index does), whose separate pieces are joined by
# Boruvka rounds through the same cells; HDBSCAN's own selection then runs on that tree.
# Within a person the graph holds the tree's edges, so the persons come out the same.
EXACT_MAX = 2000
NEIGHBOURS = 15  # per face in the graph: the edges single linkage needs within a person
CELL_SIZE = 256  # faces per k-means cell of the neighbour search
PROBES = 8  # nearest cells searched for each face
JOIN_ROUNDS = 12  # Boruvka rounds that join the graph's pieces by their closest faces
_BLOCK = 1 << 22  # similarities computed at once (16 MB of float32)
_FAR = 2.0  # the largest distance between unit vectors: pieces no search could join


def l2_normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    unit: np.ndarray = x / np.maximum(norms, 1e-12)
    return unit


def cluster_embeddings(
    vectors: np.ndarray,
    min_cluster_size: int = 2,
    epsilon: float = 0.0,
    min_similarity: float = 0.45,
    *,
    exact_max: int = EXACT_MAX,
) -> tuple[np.ndarray, np.ndarray]:
    """Person labels (-1 = noise) and membership strengths for face embeddings."""
    n = vectors.shape[0]
    if n < max(2, min_cluster_size):
        return np.full(n, -1, dtype=np.int64), np.zeros(n, dtype=np.float32)
    unit = np.ascontiguousarray(l2_normalise(vectors.astype(np.float32)), dtype=np.float32)
    neighbours: Neighbours | None = None
    if n <= exact_max:
        model = hdbscan.HDBSCAN(min_cluster_size=min_cluster_size, min_samples=1).fit(unit)
        linkage = np.asarray(model.single_linkage_tree_.to_numpy(), dtype=np.float64)
    else:
        started = time.perf_counter()
        index = CellIndex(unit)
        neighbours = index.search(NEIGHBOURS)
        searched = time.perf_counter()
        linkage = hdbscan_linkage.label(np.ascontiguousarray(spanning_tree(index, neighbours)))
        logger.debug(
            "%d faces: neighbours in %.1f s, spanning tree in %.1f s",
            n,
            searched - started,
            time.perf_counter() - searched,
        )
    labels, strengths = _select(linkage, min_cluster_size, epsilon)
    labels = _prune(unit, labels, min_similarity, min_cluster_size, neighbours)
    strengths[labels < 0] = 0.0
    return labels, strengths


@dataclass
class Neighbours:
    """For each face, the indices (-1 = none) and cosines of its nearest faces, best first."""

    index: np.ndarray  # (n, k) int64
    cosine: np.ndarray  # (n, k) float32


class CellIndex:
    """Unit vectors in spherical k-means cells, each searched in its nearest cells."""

    def __init__(
        self, unit: np.ndarray, cell_size: int = CELL_SIZE, probes: int = PROBES, seed: int = 0
    ) -> None:
        self.unit = unit
        n = unit.shape[0]
        cells = max(1, n // cell_size)
        self.centres = _spherical_kmeans(unit, cells, np.random.default_rng(seed))
        self.probes = min(probes, cells)
        self.probe = _top_columns(unit, self.centres, self.probes)  # (n, probes), nearest first
        home = self.probe[:, 0]
        self.members = _groups(home, cells)
        self.queries = _groups(self.probe.ravel(), cells, self.probes)

    def search(self, k: int, exclude: np.ndarray | None = None) -> Neighbours:
        """The k most similar other faces of each face (with `exclude`: of another group)."""
        n = self.unit.shape[0]
        best = np.full((n, k), -np.inf, dtype=np.float32)
        which = np.full((n, k), -1, dtype=np.int64)
        for members, queries in zip(self.members, self.queries, strict=True):
            if members.size == 0:
                continue
            if exclude is not None:
                groups = exclude[members]
                if groups.min() == groups.max():  # the whole cell is one group: skip its own
                    queries = queries[exclude[queries] != groups[0]]
            rows = max(1, _BLOCK // members.size)
            for start in range(0, queries.size, rows):
                q = queries[start : start + rows]
                sims = self.unit[q] @ self.unit[members].T
                if exclude is None:
                    sims[q[:, None] == members[None, :]] = -np.inf
                else:
                    sims[exclude[q][:, None] == exclude[members][None, :]] = -np.inf
                take = min(k, members.size)
                top = np.argpartition(sims, sims.shape[1] - take, axis=1)[:, -take:]
                merged = np.concatenate([best[q], np.take_along_axis(sims, top, 1)], axis=1)
                merged_ids = np.concatenate([which[q], members[top]], axis=1)
                keep = np.argpartition(merged, merged.shape[1] - k, axis=1)[:, -k:]
                best[q] = np.take_along_axis(merged, keep, 1)
                which[q] = np.take_along_axis(merged_ids, keep, 1)
        order = np.argsort(-best, axis=1)
        best = np.take_along_axis(best, order, 1)
        which = np.take_along_axis(which, order, 1)
        which[~np.isfinite(best)] = -1
        return Neighbours(which, best)


def _groups(keys: np.ndarray, count: int, per_row: int = 1) -> list[np.ndarray]:
    """Row indices (of `keys` read as rows of `per_row`) for each key 0..count-1."""
    order = np.argsort(keys, kind="stable")
    bounds = np.searchsorted(keys[order], np.arange(count + 1))
    rows = (order // per_row).astype(np.int64)
    return [rows[bounds[c] : bounds[c + 1]] for c in range(count)]


def _top_columns(unit: np.ndarray, centres: np.ndarray, k: int) -> np.ndarray:
    """For each row, the k centres most similar to it, most similar first."""
    out = np.empty((unit.shape[0], k), dtype=np.int64)
    rows = max(1, _BLOCK // centres.shape[0])
    for start in range(0, unit.shape[0], rows):
        sims = unit[start : start + rows] @ centres.T
        top = np.argpartition(sims, sims.shape[1] - k, axis=1)[:, -k:]
        order = np.argsort(-np.take_along_axis(sims, top, 1), axis=1)
        out[start : start + rows] = np.take_along_axis(top, order, 1)
    return out


def _spherical_kmeans(
    unit: np.ndarray, cells: int, rng: np.random.Generator, rounds: int = 10
) -> np.ndarray:
    """Cell centres: k-means on the unit sphere, fitted on a sample of at most 64 per cell."""
    if cells == 1:
        one: np.ndarray = l2_normalise(unit.mean(axis=0, keepdims=True)).astype(np.float32)
        return one
    sample = unit[rng.choice(unit.shape[0], min(unit.shape[0], 64 * cells), replace=False)]
    centres = sample[rng.choice(sample.shape[0], cells, replace=False)].copy()
    for _ in range(rounds):
        nearest = _top_columns(sample, centres, 1)[:, 0]
        sums = np.zeros_like(centres)
        np.add.at(sums, nearest, sample)
        empty = np.flatnonzero(np.bincount(nearest, minlength=cells) == 0)
        sums[empty] = sample[rng.choice(sample.shape[0], empty.size, replace=False)]
        centres = l2_normalise(sums).astype(np.float32)
    out: np.ndarray = centres
    return out


def _distance(cosine: np.ndarray) -> np.ndarray:
    """Euclidean distance between unit vectors from their cosine."""
    # Never exactly 0: a sparse graph reads a zero weight as a missing edge.
    d: np.ndarray = np.sqrt(np.maximum(2.0 - 2.0 * cosine.astype(np.float64), 1e-18))
    return d


def spanning_tree(index: CellIndex, neighbours: Neighbours) -> np.ndarray:
    """Minimum spanning tree (i, j, distance rows, shortest first) of the neighbour graph."""
    n = index.unit.shape[0]
    k = neighbours.index.shape[1]
    found = neighbours.index >= 0
    edges = [
        (
            np.repeat(np.arange(n), k)[found.ravel()],
            neighbours.index[found],
            _distance(neighbours.cosine[found]),
        )
    ]
    for _ in range(JOIN_ROUNDS):
        pieces, piece = csgraph.connected_components(_graph(n, edges), directed=False)
        logger.debug("%d faces: neighbour graph in %d pieces", n, pieces)
        if pieces == 1:
            break
        # Boruvka: each piece joins another by its shortest edge out, found in the cells.
        closest = index.search(1, exclude=piece)
        other, cosine = closest.index[:, 0], closest.cosine[:, 0]
        order = np.flatnonzero(other >= 0)
        if order.size == 0:
            break
        order = order[np.argsort(-cosine[order], kind="stable")]
        _, first = np.unique(piece[order], return_index=True)
        faces = order[first]  # for each piece that reaches another, its closest face
        edges.append((faces, other[faces], _distance(cosine[faces])))
    pieces, piece = csgraph.connected_components(_graph(n, edges), directed=False)
    if pieces > 1:
        heads = np.unique(piece, return_index=True)[1]
        logger.debug("joining %d pieces at the largest distance", pieces)
        edges.append((heads[1:], np.full(pieces - 1, heads[0]), np.full(pieces - 1, _FAR)))
    tree = csgraph.minimum_spanning_tree(_graph(n, edges)).tocoo()
    mst = np.column_stack([tree.row, tree.col, tree.data]).astype(np.float64)
    return mst[np.argsort(mst[:, 2], kind="stable")]


def _graph(n: int, edges: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> sparse.csr_matrix:
    """An undirected graph from edge lists; a pair listed twice keeps its shortest edge."""
    i = np.concatenate([e[0] for e in edges]).astype(np.int64)
    j = np.concatenate([e[1] for e in edges]).astype(np.int64)
    w = np.concatenate([e[2] for e in edges])
    low, high = np.minimum(i, j), np.maximum(i, j)
    order = np.lexsort((w, high, low))
    key = low[order] * n + high[order]
    first = order[np.concatenate([[True], key[1:] != key[:-1]])]
    return sparse.csr_matrix((w[first], (low[first], high[first])), shape=(n, n))


def _select(
    linkage: np.ndarray, min_cluster_size: int, epsilon: float
) -> tuple[np.ndarray, np.ndarray]:
    """HDBSCAN's excess-of-mass persons from a single-linkage tree, and their strengths."""
    # With min_samples=1 the mutual reachability distance is the plain distance, so this
    # is the tree HDBSCAN builds itself. All faces count as one person only when the
    # tree never splits into two persons further apart than epsilon: allowing it always
    # lets the root, which holds every face from distance infinity, outweigh the persons
    # once one of them has a few hundred faces (every face merged into one).
    n = linkage.shape[0] + 1
    condensed = hdbscan_tree.condense_tree(linkage, min_cluster_size)
    children = condensed[(condensed["parent"] == n) & (condensed["child"] >= n)]
    split = 1.0 / float(children["lambda_val"].max()) if children.size else 0.0
    labels, strengths, *_ = hdbscan_._tree_to_labels(
        None,
        linkage,
        min_cluster_size=min_cluster_size,
        cluster_selection_method="eom",
        allow_single_cluster=split <= epsilon,
        cluster_selection_epsilon=epsilon,
    )
    return np.asarray(labels, dtype=np.int64), np.asarray(strengths, dtype=np.float32)


def _prune(
    unit: np.ndarray,
    labels: np.ndarray,
    min_similarity: float,
    min_size: int,
    neighbours: Neighbours | None = None,
) -> np.ndarray:
    """Drop members whose best cosine to the rest of their cluster is too low."""
    best = np.full(labels.shape[0], -np.inf, dtype=np.float32)
    if neighbours is not None:
        # A neighbour in the same cluster bounds the best cosine from below.
        same = (neighbours.index >= 0) & (labels[neighbours.index] == labels[:, None])
        best = np.where(same, neighbours.cosine, -np.inf).max(axis=1)
    doubtful = np.flatnonzero((labels >= 0) & (best < min_similarity))
    members = _groups(np.where(labels >= 0, labels, labels.max() + 1), int(labels.max()) + 1)
    for label in np.unique(labels[doubtful]):
        everyone = members[label]
        ask = doubtful[labels[doubtful] == label]
        rows = max(1, _BLOCK // everyone.size)
        for start in range(0, ask.size, rows):
            q = ask[start : start + rows]
            sims = unit[q] @ unit[everyone].T
            sims[q[:, None] == everyone[None, :]] = -1.0
            best[q] = sims.max(axis=1)
    labels = labels.copy()
    labels[(labels >= 0) & (best < min_similarity)] = -1
    small = np.flatnonzero(np.bincount(labels[labels >= 0], minlength=1) < min_size)
    labels[np.isin(labels, small)] = -1
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


