"""Benchmark: clustering 1k, 10k and 100k face embeddings into persons.

The faces are SFace embeddings built around the real people in shipped photos
(`tests/faces_synth.py` says how), with a known person for each, so quality is measured
against the truth: adjusted Rand index (strangers and noise each count as their own
person) and pairwise precision and recall (of the pairs put together, how many are one
person; of the pairs of one person, how many were put together).

Each clustering runs in a child process that loads the vectors, resets its peak RSS
(`/proc/self/clear_refs`), clusters, and reports wall time and peak RSS during clustering.
Methods, all with the project's settings (min cluster size 2, epsilon 0.8, min cosine 0.45):

- `new`: `tasks.clustering.cluster_embeddings` as it is now (above 2,000 faces: a k-means cell
  index, a 15-neighbour graph, its spanning tree, HDBSCAN's selection on that tree).
- `baseline`: the path before issue 6 (PCA to 50 dims, HDBSCAN's own tree search, always
  allowing a single cluster), kept verbatim below. Run where it takes minutes, not hours
  (`--baseline-max`, default 10,000); above that it is skipped and extrapolated.
- `exact`: the new selection on HDBSCAN's tree over every pairwise distance, to show
  what the neighbour graph changes (`--exact-max`, default 10,000).

Candidates from well-kept libraries (issue 14), each run only when its package is
installed in the venv (otherwise the bench prints "not installed"); `--candidates` picks them:

- `faiss-hnsw`: the neighbour graph from `faiss-cpu`'s HNSW index (M 32, efSearch 64,
  inner product on unit vectors), then the same spanning tree, selection and pruning;
- `faiss-ivf`: the same from faiss's IVF-Flat index with our cell size and probes
  (n/256 lists, 8 probes): the library version of what `CellIndex` hand-writes;
- `pynndescent`: the neighbour graph from `pynndescent` 0.7's NNDescent (cosine);
- `fast-hdbscan`: `fast_hdbscan.HDBSCAN` on the unit vectors (its own exact tree over
  a k-d tree, min_samples 1, epsilon as the project's), then the project's pruning.

The graph candidates have no index of ours to join the graph's pieces with (Boruvka rounds
through the cells, as `spanning_tree` does), so pieces left after the graph are joined at
the largest distance, as `spanning_tree` does when its rounds find no join; the number of
pieces is printed with each run.

Run from the repository root: `.venv/bin/python -m bench.bench_cluster_scale`
(`--sizes 1000,10000,100000` is the default).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(tempfile.gettempdir()) / "photoindex-bench"
SETTINGS = {"min_cluster_size": 2, "epsilon": 0.8, "min_similarity": 0.45}
MEASURED_BASELINE_100K_S = 26 * 60
"""HDBSCAN after PCA-50 took about 26 min at 100k faces on the 2-core build machine."""


def baseline_cluster(
    vectors: np.ndarray, min_cluster_size: int, epsilon: float, min_similarity: float
) -> np.ndarray:
    """The clustering before issue 6, verbatim: PCA-50, HDBSCAN, prune (labels only)."""
    import hdbscan

    def l2_normalise(x: np.ndarray) -> np.ndarray:
        unit: np.ndarray = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        return unit

    def reduce_dims(x: np.ndarray, dims: int = 50) -> np.ndarray:
        if x.shape[1] <= dims or x.shape[0] <= dims:
            return x
        centred = x - x.mean(axis=0, keepdims=True)
        cov = centred.T @ centred / max(1, x.shape[0] - 1)
        values, vecs = np.linalg.eigh(cov)
        top = vecs[:, np.argsort(values)[::-1][:dims]]
        return l2_normalise(centred @ top)

    unit = l2_normalise(vectors.astype(np.float32))
    model = hdbscan.HDBSCAN(
        min_cluster_size=min_cluster_size,
        min_samples=1,
        metric="euclidean",
        cluster_selection_epsilon=epsilon,
        allow_single_cluster=True,
    )
    labels = np.asarray(model.fit_predict(reduce_dims(unit)), dtype=np.int64)
    for label in np.unique(labels[labels >= 0]):
        members = np.flatnonzero(labels == label)
        sims = unit[members] @ unit[members].T
        np.fill_diagonal(sims, -1.0)
        labels[members[sims.max(axis=1) < min_similarity]] = -1
        if np.count_nonzero(labels == label) < min_cluster_size:
            labels[labels == label] = -1
    return labels


# Candidate method -> the module it needs (issue 14: libraries instead of hand-written code).
CANDIDATES = {
    "faiss-hnsw": "faiss",
    "faiss-ivf": "faiss",
    "pynndescent": "pynndescent",
    "fast-hdbscan": "fast_hdbscan",
}


def installed(method: str) -> bool:
    """Whether a candidate's package is importable here."""
    import importlib.util

    return importlib.util.find_spec(CANDIDATES[method]) is not None


def _faiss_neighbours(unit: np.ndarray, k: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Each face's k nearest other faces (indices, cosines) from a faiss index."""
    import faiss

    faiss.omp_set_num_threads(os.cpu_count() or 1)
    n, dim = unit.shape
    index: Any
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 64
        index.add(unit)
        index.hnsw.efSearch = 64
    else:
        from tasks.clustering import CELL_SIZE, PROBES

        lists = max(1, n // CELL_SIZE)
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, lists, faiss.METRIC_INNER_PRODUCT)
        index.train(unit)
        index.add(unit)
        index.nprobe = min(PROBES, lists)
    cosine, found = index.search(unit, k + 1)
    return _drop_self(found.astype(np.int64), cosine.astype(np.float32), k)


def _pynndescent_neighbours(unit: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each face's k nearest other faces (indices, cosines) from NNDescent's graph."""
    from pynndescent import NNDescent

    nnd = NNDescent(unit, metric="cosine", n_neighbors=k + 1, random_state=0,
                    n_jobs=os.cpu_count() or 1, compressed=True)  # fmt: skip
    found, distance = nnd.neighbor_graph
    return _drop_self(found.astype(np.int64), (1.0 - distance).astype(np.float32), k)


def _drop_self(found: np.ndarray, cosine: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best neighbours of each row other than the row itself (-1 = none)."""
    n = found.shape[0]
    cosine = np.where((found == np.arange(n)[:, None]) | (found < 0), -np.inf, cosine)
    order = np.argsort(-cosine, axis=1, kind="stable")[:, :k]
    cosine = np.take_along_axis(cosine, order, 1)
    found = np.take_along_axis(found, order, 1)
    found[~np.isfinite(cosine)] = -1
    return found, cosine


PIECES: list[int] = []  # pieces of the last candidate graph, for the child's report


def graph_cluster(
    unit: np.ndarray, found: np.ndarray, cosine: np.ndarray, min_cluster_size: int,
    epsilon: float, min_similarity: float,
) -> np.ndarray:  # fmt: skip
    """The project's tree, selection and pruning on a neighbour graph found elsewhere."""
    from hdbscan import _hdbscan_linkage as linkage_of
    from scipy.sparse import csgraph

    from tasks.clustering import _FAR, Neighbours, _distance, _graph, _prune, _select

    n, k = found.shape
    ok = found >= 0
    edges = [(np.repeat(np.arange(n), k)[ok.ravel()], found[ok], _distance(cosine[ok]))]
    pieces, piece = csgraph.connected_components(_graph(n, edges), directed=False)
    PIECES.append(int(pieces))
    if pieces > 1:
        heads = np.unique(piece, return_index=True)[1]
        edges.append((heads[1:], np.full(pieces - 1, heads[0]), np.full(pieces - 1, _FAR)))
    tree = csgraph.minimum_spanning_tree(_graph(n, edges)).tocoo()
    mst = np.column_stack([tree.row, tree.col, tree.data]).astype(np.float64)
    linkage = linkage_of.label(np.ascontiguousarray(mst[np.argsort(mst[:, 2], kind="stable")]))
    labels, _ = _select(linkage, min_cluster_size, epsilon)
    return _prune(unit, labels, min_similarity, min_cluster_size, Neighbours(found, cosine))


def candidate_cluster(
    method: str, vectors: np.ndarray, min_cluster_size: int, epsilon: float,
    min_similarity: float,
) -> np.ndarray:  # fmt: skip
    """Person labels from one candidate library (see the module's docstring)."""
    from tasks.clustering import NEIGHBOURS, _prune, l2_normalise

    unit = np.ascontiguousarray(l2_normalise(vectors.astype(np.float32)), dtype=np.float32)
    if method == "fast-hdbscan":
        import fast_hdbscan

        model = fast_hdbscan.HDBSCAN(min_cluster_size=min_cluster_size, min_samples=1,
                                     cluster_selection_epsilon=epsilon)  # fmt: skip
        labels = np.asarray(model.fit_predict(unit), dtype=np.int64)
        return _prune(unit, labels, min_similarity, min_cluster_size)
    if method == "pynndescent":
        found, cosine = _pynndescent_neighbours(unit, NEIGHBOURS)
    else:
        found, cosine = _faiss_neighbours(unit, NEIGHBOURS, method.removeprefix("faiss-"))
    return graph_cluster(unit, found, cosine, min_cluster_size, epsilon, min_similarity)


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def child(method: str, vectors_path: Path, labels_path: Path) -> None:
    """Cluster one saved set with one method; print seconds and RSS as JSON."""
    from tasks.clustering import cluster_embeddings

    vectors = np.load(vectors_path)
    before = _rss_kb("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # peak RSS starts again from here
        reset = True
    except OSError:
        reset = False
    started = time.perf_counter()
    if method == "baseline":
        labels = baseline_cluster(vectors, **SETTINGS)  # type: ignore[arg-type]
    elif method in CANDIDATES:
        labels = candidate_cluster(method, vectors, **SETTINGS)  # type: ignore[arg-type]
    elif method == "exact":
        labels, _ = cluster_embeddings(vectors, **SETTINGS, exact_max=len(vectors))  # type: ignore[arg-type]
    else:
        labels, _ = cluster_embeddings(vectors, **SETTINGS)  # type: ignore[arg-type]
    seconds = time.perf_counter() - started
    peak = _rss_kb("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    np.save(labels_path, labels)
    print(json.dumps({"seconds": seconds, "before_kb": before, "peak_kb": peak, "reset": reset,
                      "pieces": PIECES[-1] if PIECES else None}))  # fmt: skip


@dataclass
class Row:
    """One method at one size."""

    size: int
    method: str
    seconds: float
    peak_mb: float
    data_mb: float
    found: int
    matched: int
    persons: int
    ari: float
    precision: float
    recall: float
    note: str = ""


def matched(truth: np.ndarray, labels: np.ndarray, share: float = 0.9) -> int:
    """True persons (two faces or more) that one cluster finds: 90% of the cluster is the
    person and 90% of the person is in the cluster."""
    keep = labels >= 0
    person_size = np.bincount(truth)
    cluster_size = np.bincount(labels[keep])
    pairs, count = np.unique(np.stack([truth[keep], labels[keep]]), axis=1, return_counts=True)
    person, cluster = pairs
    whole = person_size[person]
    ok = (whole >= 2) & (count >= share * whole) & (count >= share * cluster_size[cluster])
    return int(ok.sum())


def quality(truth: np.ndarray, labels: np.ndarray) -> tuple[float, float, float]:
    """Adjusted Rand index and pairwise precision and recall; each noise face on its own."""
    from sklearn.metrics import adjusted_rand_score
    from sklearn.metrics.cluster import pair_confusion_matrix

    noise = labels < 0
    own = labels.copy()
    own[noise] = labels.max() + 1 + np.arange(int(noise.sum()))
    (_, fp), (fn, tp) = pair_confusion_matrix(truth, own).astype(np.float64)
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    return float(adjusted_rand_score(truth, own)), float(precision), float(recall)


def run(method: str, vectors: Path, truth: np.ndarray, persons: int, timeout: float) -> Row:
    """Cluster in a child process and score the labels it wrote."""
    labels_path = vectors.with_name(f"{vectors.stem}-{method}-labels.npy")
    cmd = [sys.executable, "-m", "bench.bench_cluster_scale", "--child", method, str(vectors),
           str(labels_path)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    n = len(truth)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                              cwd=ROOT, check=True)  # fmt: skip
    except subprocess.TimeoutExpired:
        nan = float("nan")
        return Row(n, method, nan, nan, nan, 0, 0, persons, nan, nan, nan, f"> {timeout:.0f} s")
    except subprocess.CalledProcessError as failed:
        nan = float("nan")
        why = (failed.stderr or "").strip().splitlines()[-1:] or ["no message"]
        return Row(n, method, nan, nan, nan, 0, 0, persons, nan, nan, nan, f"failed: {why[0]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    labels = np.load(labels_path)
    ari, precision, recall = quality(truth, labels)
    notes = [] if out["reset"] else ["peak RSS of the whole child"]
    if out.get("pieces") is not None:
        notes.append(f"graph in {out['pieces']} pieces")
    note = "; ".join(notes)
    return Row(
        n,
        method,
        out["seconds"],
        out["peak_kb"] / 1024,
        out["before_kb"] / 1024,
        int(np.unique(labels[labels >= 0]).size),
        matched(truth, labels),
        persons,
        ari,
        precision,
        recall,
        note,
    )


def _fmt(x: float, spec: str) -> str:
    return "-" if math.isnan(x) else format(x, spec)


def print_rows(rows: list[Row]) -> None:
    """The table, each figure also as a ratio against the baseline at the same size."""
    base = {r.size: r for r in rows if r.method == "baseline" and not math.isnan(r.seconds)}
    print("persons: clusters found / true persons with 2+ faces; whole: true persons one "
          "cluster finds (90% both ways)")  # fmt: skip
    print("peak RSS: the child's peak while clustering (loaded data and imports included); "
          "+MB: above the RSS before clustering")  # fmt: skip
    print(f"{'faces':>7} {'method':<12} {'seconds':>8} {'peak RSS':>9} {'+MB':>6} "
          f"{'persons':>11} {'whole':>6} {'ARI':>6} {'prec':>6} {'recall':>6} | ratio vs "
          f"baseline: {'time':>7} {'peak':>5} {'ARI':>5}")  # fmt: skip
    for r in rows:
        b = base.get(r.size)
        if b is None:
            ratio = "no baseline at this size"
        else:
            ratio = (
                f"{_fmt(r.seconds / b.seconds, '7.3f')} {_fmt(r.peak_mb / b.peak_mb, '5.2f')} "
                f"{_fmt(r.ari / b.ari if b.ari else math.nan, '5.2f')}"
            )
        print(
            f"{r.size:>7} {r.method:<12} {_fmt(r.seconds, '8.2f')} {_fmt(r.peak_mb, '6.0f')} MB "
            f"{_fmt(r.peak_mb - r.data_mb, '6.0f')} {r.found:>5}/{r.persons:<5} {r.matched:>6} "
            f"{_fmt(r.ari, '6.4f')} {_fmt(r.precision, '6.4f')} {_fmt(r.recall, '6.4f')} | "
            f"{'':18}{ratio}" + (f"  [{r.note}]" if r.note else "")
        )


def growth(rows: list[Row], method: str) -> str:
    """How time and memory grow between sizes: t ~ n^a."""
    mine = sorted((r for r in rows if r.method == method and not math.isnan(r.seconds)),
                  key=lambda r: r.size)  # fmt: skip
    parts = []
    for a, b in zip(mine, mine[1:], strict=False):
        k = math.log(b.size / a.size)
        parts.append(
            f"{a.size}->{b.size}: time x{b.seconds / a.seconds:.1f} "
            f"(n^{math.log(b.seconds / a.seconds) / k:.2f}), "
            f"peak RSS x{b.peak_mb / a.peak_mb:.1f}"
        )
    return f"{method}: " + ("; ".join(parts) if parts else "one size only")


def main() -> None:
    """Build the face sets, cluster each with each method in a child, print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--baseline-max", type=int, default=10_000,
                        help="largest size to run the old PCA-50 path at")  # fmt: skip
    parser.add_argument("--exact-max", type=int, default=10_000,
                        help="largest size to run the exact-tree check at")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=1200.0,
                        help="seconds before a child is given up on")  # fmt: skip
    parser.add_argument(
        "--within",
        type=float,
        default=None,
        help="mean cosine between two faces of one person "
        "(default: measured between different real photos of one person)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--candidates", default=",".join(CANDIDATES),
                        help="library candidates to run where installed ('' for none)")  # fmt: skip
    parser.add_argument("--candidate-timeout", type=float, default=None,
                        help="seconds before a candidate is given up on")  # fmt: skip
    parser.add_argument("--child", nargs=3, metavar=("METHOD", "VECTORS", "LABELS"),
                        help=argparse.SUPPRESS)  # fmt: skip
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]), Path(args.child[2]))
        return

    os.environ.setdefault("PHOTOINDEX_DATA_DIR", str(CACHE / "cluster-data"))
    import warnings

    warnings.filterwarnings("ignore", "`estimate` is deprecated", FutureWarning)
    from tests.faces_synth import make_library, real_faces, real_spread, sample_spread

    started = time.perf_counter()
    real = real_faces()
    spread = real_spread(real)
    print(f"real faces: {len(real.embeddings)} embeddings of {len(real.names)} people "
          f"({', '.join(real.names)}) in {time.perf_counter() - started:.0f} s")  # fmt: skip
    print(f"real cosines: {spread.line()}")

    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        # Quality on the real faces themselves, by both the new and the old path.
        path = Path(tmp) / "real.npy"
        np.save(path, real.embeddings)
        for method in ("new", "baseline"):
            r = run(method, path, real.person, len(real.names), args.timeout)
            print(f"real photos, {method:<8}: {r.found} persons of {len(real.names)}, "
                  f"{r.matched} found whole, "
                  f"ARI {r.ari:.3f}, precision {r.precision:.3f}, "
                  f"recall {r.recall:.3f}")  # fmt: skip
        for n in (int(s) for s in args.sizes.split(",")):
            lib = make_library(real, n, seed=args.seed, target_within=args.within)
            synth = sample_spread(lib.vectors, lib.person, np.random.default_rng(args.seed))
            print(f"\n{n} faces: {lib.persons} persons (largest {np.bincount(lib.person).max()} "
                  f"faces), {lib.strangers} strangers; {synth.line()}")  # fmt: skip
            path = Path(tmp) / f"faces-{n}.npy"
            np.save(path, lib.vectors)
            methods = ["new"]
            methods += ["exact"] if n <= args.exact_max else []
            methods += ["baseline"] if n <= args.baseline_max else []
            for method in [m for m in args.candidates.split(",") if m]:
                if method not in CANDIDATES:
                    parser.error(f"unknown candidate {method!r}; known: {', '.join(CANDIDATES)}")
                if installed(method):
                    methods.append(method)
                else:
                    print(f"  {method:<12} not installed ({CANDIDATES[method]})")
            for method in methods:
                limit = args.timeout
                if method in CANDIDATES and args.candidate_timeout is not None:
                    limit = args.candidate_timeout
                rows.append(run(method, path, lib.person, lib.persons, limit))
                r = rows[-1]
                print(f"  {method:<12} {_fmt(r.seconds, '.1f')} s, "
                      f"peak RSS {_fmt(r.peak_mb, '.0f')} MB, "
                      f"{r.found} persons ({r.matched} whole), "
                      f"ARI {_fmt(r.ari, '.3f')}" + (f" [{r.note}]" if r.note else ""),
                      flush=True)  # fmt: skip
    print()
    print_rows(rows)
    print()
    for method in ("new", "baseline", "exact", *(m for m in CANDIDATES if m in
                                                  {r.method for r in rows})):  # fmt: skip
        print(growth(rows, method))
    base = sorted((r for r in rows if r.method == "baseline" and not math.isnan(r.seconds)),
                  key=lambda r: r.size)  # fmt: skip
    skipped = [r.size for r in rows if r.method == "new" and r.size > args.baseline_max]
    if skipped and len(base) >= 2:
        a, b = base[-2], base[-1]
        power = math.log(b.seconds / a.seconds) / math.log(b.size / a.size)
        for n in skipped:
            guess = b.seconds * (n / b.size) ** power
            new = next(r for r in rows if r.method == "new" and r.size == n)
            print(f"baseline at {n}: skipped; extrapolated n^{power:.2f} from {b.size} -> "
                  f"{guess / 60:.0f} min, likely low: its tree search grows faster at large n "
                  f"(measured earlier: ~{MEASURED_BASELINE_100K_S // 60} min at 100k; "
                  f"--baseline-max 100000 measures it); new/extrapolated time "
                  f"{new.seconds / guess:.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
