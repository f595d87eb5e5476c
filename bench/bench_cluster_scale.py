"""Benchmark: clustering 1k, 10k and 100k face embeddings into persons.

The faces are SFace embeddings built around the real people in shipped photos
(`bench/_faces_synth.py` says how), with a known person for each, so quality is measured
against the truth: adjusted Rand index (strangers and noise each count as their own
person) and pairwise precision and recall (of the pairs put together, how many are one
person; of the pairs of one person, how many were put together).

Each clustering runs in a child process that loads the vectors, resets its peak RSS
(`/proc/self/clear_refs`), clusters, and reports wall time and peak RSS during clustering.
Methods, all with the project's settings (min cluster size 2, epsilon 0.8, min cosine 0.45):

- `new`: `tasks.cluster.cluster_embeddings` as it is now (above 2,000 faces: a k-means cell
  index, a 15-neighbour graph, its spanning tree, HDBSCAN's selection on that tree).
- `baseline`: the path before issue 6 (PCA to 50 dims, HDBSCAN's own tree search, always
  allowing a single cluster), kept verbatim below. Run where it takes minutes, not hours
  (`--baseline-max`, default 10,000); above that it is skipped and extrapolated.
- `exact`: the new selection on HDBSCAN's tree over every pairwise distance, to show
  what the neighbour graph changes (`--exact-max`, default 10,000).

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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(tempfile.gettempdir()) / "photoindex-bench"
SETTINGS = {"min_cluster_size": 2, "epsilon": 0.8, "min_similarity": 0.45}
FACTS_BASELINE_100K_S = 26 * 60  # FACTS.md: HDBSCAN after PCA-50 took about 26 min at 100k


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


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def child(method: str, vectors_path: Path, labels_path: Path) -> None:
    """Cluster one saved set with one method; print seconds and RSS as JSON."""
    from tasks.cluster import cluster_embeddings

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
    elif method == "exact":
        labels, _ = cluster_embeddings(vectors, **SETTINGS, exact_max=len(vectors))  # type: ignore[arg-type]
    else:
        labels, _ = cluster_embeddings(vectors, **SETTINGS)  # type: ignore[arg-type]
    seconds = time.perf_counter() - started
    peak = _rss_kb("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    np.save(labels_path, labels)
    print(json.dumps({"seconds": seconds, "before_kb": before, "peak_kb": peak, "reset": reset}))


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
    out = json.loads(done.stdout.strip().splitlines()[-1])
    labels = np.load(labels_path)
    ari, precision, recall = quality(truth, labels)
    note = "" if out["reset"] else "peak RSS of the whole child"
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
    print(f"{'faces':>7} {'method':<8} {'seconds':>8} {'peak RSS':>9} {'+MB':>6} "
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
            f"{r.size:>7} {r.method:<8} {_fmt(r.seconds, '8.2f')} {_fmt(r.peak_mb, '6.0f')} MB "
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
    parser.add_argument("--child", nargs=3, metavar=("METHOD", "VECTORS", "LABELS"),
                        help=argparse.SUPPRESS)  # fmt: skip
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]), Path(args.child[2]))
        return

    os.environ.setdefault("PHOTOINDEX_DATA_DIR", str(CACHE / "cluster-data"))
    import warnings

    warnings.filterwarnings("ignore", "`estimate` is deprecated", FutureWarning)
    from bench._faces_synth import make_library, real_faces, real_spread, sample_spread

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
            for method in methods:
                rows.append(run(method, path, lib.person, lib.persons, args.timeout))
                r = rows[-1]
                print(f"  {method:<8} {_fmt(r.seconds, '.1f')} s, "
                      f"peak RSS {_fmt(r.peak_mb, '.0f')} MB, "
                      f"{r.found} persons ({r.matched} whole), "
                      f"ARI {_fmt(r.ari, '.3f')}", flush=True)  # fmt: skip
    print()
    print_rows(rows)
    print()
    for method in ("new", "baseline", "exact"):
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
                  f"(FACTS.md measured ~{FACTS_BASELINE_100K_S // 60} min at 100k; "
                  f"--baseline-max 100000 measures it); new/extrapolated time "
                  f"{new.seconds / guess:.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
