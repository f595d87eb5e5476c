"""Clustering thousands of faces: the neighbour-graph path against exact HDBSCAN and the truth.

The faces are SFace embeddings of the real people in shipped photos and libraries built
around them (`tests/faces_synth.py`), so every face has a known person.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

import tasks.clustering as cluster
from tasks.clustering import CellIndex, cluster_embeddings
from tests.faces_synth import Library, RealFaces, make_library, real_faces

# insightface's norm_crop calls a scikit-image API that warns it will go in scikit-image 2.2.
pytestmark = pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning")

SETTINGS = {"min_cluster_size": 2, "epsilon": 0.8, "min_similarity": 0.45}


@pytest.fixture(scope="module")
def real(data_dir: Path) -> RealFaces:
    """The people in the photos scikit-image and insightface ship, with recorded edits."""
    return real_faces(archives=False, fetch=False)


@pytest.fixture(scope="module")
def library(real: RealFaces) -> Library:
    """5,000 faces: about 120 persons of Zipf-like sizes and 250 strangers."""
    return make_library(real, 5000, seed=3)


def _cluster(vectors: np.ndarray, exact_max: int = cluster.EXACT_MAX) -> np.ndarray:
    labels, _ = cluster_embeddings(
        vectors, 2, SETTINGS["epsilon"], SETTINGS["min_similarity"], exact_max=exact_max
    )
    return labels


def _noise_apart(labels: np.ndarray) -> np.ndarray:
    out = labels.copy()
    out[labels < 0] = labels.max() + 1 + np.arange(int((labels < 0).sum()))
    return out


def test_the_real_people_are_told_apart(real: RealFaces) -> None:
    labels = _cluster(real.embeddings)
    assert np.unique(labels[labels >= 0]).size == len(real.names)
    for person in range(len(real.names)):
        mine = labels[real.person == person]
        assert np.count_nonzero(mine == np.bincount(mine[mine >= 0]).argmax()) >= 0.8 * mine.size
    # No cluster mixes two people.
    for label in np.unique(labels[labels >= 0]):
        assert np.unique(real.person[labels == label]).size == 1


def test_thousands_of_faces_cluster_into_their_persons(library: Library) -> None:
    labels = _cluster(library.vectors)
    assert adjusted_rand_score(library.person, _noise_apart(labels)) > 0.95
    found = np.unique(labels[labels >= 0])
    assert abs(found.size - library.persons) <= 0.1 * library.persons
    for label in found:  # no two persons merged (a stray stranger may join one)
        assert np.count_nonzero(np.bincount(library.person[labels == label]) > 1) == 1


def test_strangers_stay_noise(library: Library) -> None:
    labels = _cluster(library.vectors)
    once = np.bincount(library.person)[library.person] == 1
    assert once.sum() == library.strangers
    assert np.count_nonzero(labels[once] < 0) >= 0.9 * library.strangers


def test_neighbour_graph_gives_what_exact_hdbscan_gives(real: RealFaces) -> None:
    lib = make_library(real, 2500, seed=5)
    exact = _cluster(lib.vectors, exact_max=len(lib.vectors))
    graph = _cluster(lib.vectors, exact_max=0)
    assert np.unique(exact[exact >= 0]).size > 10
    # The search finds about 97% of true neighbours; a stranger whose nearest face it
    # misses may join another person instead, and nothing else changes.
    assert adjusted_rand_score(_noise_apart(exact), _noise_apart(graph)) > 0.995
    assert np.count_nonzero((exact < 0) != (graph < 0)) <= 0.002 * len(exact)


def test_neighbour_search_finds_the_true_neighbours(library: Library) -> None:
    unit = cluster.l2_normalise(library.vectors).astype(np.float32)
    found = CellIndex(unit).search(10)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    true = np.argpartition(sims, -10, axis=1)[:, -10:]
    recall = np.mean(
        [np.intersect1d(a, b).size / 10 for a, b in zip(true, found.index, strict=True)]
    )
    assert recall > 0.95
    assert np.all(found.index != np.arange(len(unit))[:, None])  # never itself
    assert np.all(np.diff(found.cosine, axis=1) <= 0)  # best first


def test_pruning_with_neighbours_is_exact(library: Library) -> None:
    unit = cluster.l2_normalise(library.vectors).astype(np.float32)
    labels = _noise_apart(np.asarray(library.person))  # everyone in a cluster, strangers too
    labels[np.bincount(library.person)[library.person] == 1] = -1
    neighbours = CellIndex(unit).search(cluster.NEIGHBOURS)
    for threshold in (0.45, 0.7, 0.85):
        exact = cluster._prune(unit, labels, threshold, 2)
        assert np.array_equal(cluster._prune(unit, labels, threshold, 2, neighbours), exact)
    assert np.any(cluster._prune(unit, labels, 0.85, 2) < 0)  # the check had work to do


def test_a_dominant_person_does_not_swallow_the_rest(real: RealFaces) -> None:
    # Always allowing HDBSCAN a single cluster merged everyone once one person had some
    # hundreds of faces: the root cluster outweighed the persons.
    lib = make_library(real, 1500, seed=0)
    assert np.bincount(lib.person).max() > 200
    labels = _cluster(lib.vectors)
    assert np.unique(labels[labels >= 0]).size >= 0.9 * lib.persons


def test_a_library_of_one_person_is_one_person(real: RealFaces) -> None:
    astronaut = real.embeddings[real.person == real.names.index("astronaut")]
    labels = _cluster(astronaut)
    assert np.all(labels == 0)


def test_small_sets_take_the_exact_path(library: Library, monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[int] = []
    original = CellIndex.__init__

    def spy(self: CellIndex, unit: np.ndarray, *args: int) -> None:
        built.append(len(unit))
        original(self, unit, *args)

    monkeypatch.setattr(CellIndex, "__init__", spy)
    _cluster(library.vectors[: cluster.EXACT_MAX])
    assert built == []
    _cluster(library.vectors[: cluster.EXACT_MAX + 1])
    assert built == [cluster.EXACT_MAX + 1]


def test_too_few_faces_are_noise() -> None:
    labels, strengths = cluster_embeddings(np.ones((1, 128), dtype=np.float32))
    assert labels.tolist() == [-1] and strengths.tolist() == [0.0]
