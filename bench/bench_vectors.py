"""Benchmark: the vector store alone (no CLIP), qdrant-client local mode vs the embedded engine.

For each size and each kind of vectors, in one run:
- local mode (`QdrantClient(path=...)`, the store before qdrant-edge-py): the baseline;
- edge, exact scan (as after a session, before HNSW is built);
- edge, HNSW (after `optimize()`, which `tasks.vectors.optimize_if_worth_it` runs).

Each measures inserting (batches of 256, the embed phase's payload fields), search
p50/p99 at k=10 (200 queries, one at a time), recall@10 against an exact numpy scan, and,
in a fresh child process, reopening the folder (time to open plus the first search) and
that process's RSS after 50 searches. Two kinds of 512-d unit vectors: random (the worst
case for HNSW) and clustered (2,000 centres with noise, pairwise cosine within a cluster
about 0.75, as real photo embeddings cluster by subject). Local mode is only run up to
`--baseline-max` points (it inserts about 220 points/s here), and on clustered vectors only
(`--baseline-kinds`): its exact scan does the same work whatever the values, so the
ratios of both kinds are against that one baseline.

Run from the repository root: `.venv/bin/python -m bench.bench_vectors`
(defaults: 20k and 100k vectors; `--efs 256,512` also searches the built index with those
search-time hnsw_ef values). At 20k a case takes 1-5 minutes on the 2-core machine
under load; at 100k the HNSW build alone ran past 20 minutes under load average 4-10, so
use `--sizes 20000` on a busy machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

DIM = 512
BATCH = 256
QUERIES = 200
K = 10


def vectors(n: int, kind: str, seed: int) -> np.ndarray:
    """n unit vectors: random, or clustered around 2,000 centres."""
    rng = np.random.default_rng(seed)
    if kind == "random":
        v = rng.standard_normal((n, DIM)).astype(np.float32)
    else:
        centres = np.random.default_rng(12345).standard_normal((2000, DIM)).astype(np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        noise = rng.standard_normal((n, DIM)).astype(np.float32) * (0.6 / np.sqrt(DIM))
        v = centres[rng.integers(0, len(centres), n)] + noise
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


def payloads(start: int, count: int) -> list[dict[str, Any]]:
    return [
        {
            "path": f"/photos/library/{i // 1000:03d}/IMG_{i:06d}.jpg",
            "sha256": f"{i:064x}",
            "width": 4032,
            "height": 3024,
            "indexed_at": "2026-01-12T10:00:00+00:00",
            "taken_at": f"20{10 + i % 15:02d}-{i % 12 + 1:02d}-10T09:30:00",
            "taken_at_source": "exif",
        }
        for i in range(start, start + count)
    ]


def ids(start: int, count: int) -> list[str]:
    return [str(uuid.UUID(int=i + 1)) for i in range(start, start + count)]


def q(values: list[float], quantile: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(np.ceil(quantile * len(ordered))) - 1))]


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class Local:
    """qdrant-client local mode."""

    def __init__(self, path: Path, dim: int | None = None) -> None:
        from qdrant_client import QdrantClient, models

        self.models = models
        self.client = QdrantClient(path=str(path))
        if dim is not None:
            self.client.create_collection(
                "c", vectors_config=models.VectorParams(size=dim, distance=models.Distance.COSINE)
            )

    def insert(self, start: int, v: np.ndarray) -> None:
        self.client.upsert(
            "c",
            points=[
                self.models.PointStruct(id=i, vector=x, payload=p)
                for i, x, p in zip(ids(start, len(v)), v.tolist(), payloads(start, len(v)),
                                   strict=True)
            ],
        )  # fmt: skip

    def search(self, v: np.ndarray) -> list[str]:
        hits = self.client.query_points("c", query=v.tolist(), limit=K).points
        return [str(h.id) for h in hits]

    def optimize(self) -> None:
        """Local mode has no index."""

    def close(self) -> None:
        self.client.close()


class Edge:
    """qdrant-edge-py, created as photoindex creates its shards."""

    def __init__(self, path: Path, dim: int | None = None) -> None:
        import qdrant_edge as qe

        from tasks.vectors import HNSW_EF
        from tasks.vectors_edge import new_shard

        self.qe = qe
        self.ef = HNSW_EF
        self.shard = new_shard(path, dim) if dim is not None else qe.EdgeShard.load(str(path))

    def insert(self, start: int, v: np.ndarray) -> None:
        qe = self.qe
        points = [
            qe.Point(i, x, p)
            for i, x, p in zip(ids(start, len(v)), v.tolist(), payloads(start, len(v)), strict=True)
        ]
        self.shard.update(qe.UpdateOperation.upsert_points(points))

    def search(self, v: np.ndarray) -> list[str]:
        qe = self.qe
        hits = self.shard.query(
            qe.QueryRequest(
                limit=K, query=qe.Query.Nearest(v.tolist()), with_payload=True,
                params=qe.SearchParams(hnsw_ef=self.ef),
            )
        )  # fmt: skip
        return [str(h.id) for h in hits]

    def optimize(self) -> None:
        self.shard.optimize()
        self.shard.flush()

    def close(self) -> None:
        self.shard.flush()
        self.shard.close()


STORES: dict[str, type[Local] | type[Edge]] = {"local": Local, "edge": Edge}


def measure_search(store: Local | Edge, data: np.ndarray, queries: np.ndarray) -> dict[str, float]:
    exact = np.argsort(-(queries @ data.T), axis=1)[:, :K]
    names = ids(0, len(data))  # once: per truth row it cost minutes at 100k (untimed)
    times: list[float] = []
    found = 0
    for query, truth in zip(queries, exact, strict=True):
        started = time.perf_counter()
        got = store.search(query)
        times.append((time.perf_counter() - started) * 1000)
        found += len(set(got) & {names[i] for i in truth})
    return {"p50": q(times, 0.5), "p99": q(times, 0.99), "recall": found / (K * len(queries))}


def child_build(
    store: str, n: int, kind: str, path: Path, efs: tuple[int, ...] = ()
) -> dict[str, Any]:
    data = vectors(n, kind, seed=1)
    queries = vectors(QUERIES, kind, seed=2)
    s: Local | Edge = STORES[store](path, DIM)
    started = time.perf_counter()
    for start in range(0, n, BATCH):
        s.insert(start, data[start : start + BATCH])
    out: dict[str, Any] = {"insert_s": time.perf_counter() - started}
    out["exact"] = measure_search(s, data, queries)
    if store == "edge":
        started = time.perf_counter()
        s.optimize()
        out["optimize_s"] = time.perf_counter() - started
        out["hnsw"] = measure_search(s, data, queries)
        assert isinstance(s, Edge)
        default = s.ef
        for ef in efs:  # the same index searched with other search-time ef values
            s.ef = ef
            out[f"hnsw ef={ef}"] = measure_search(s, data, queries)
        s.ef = default
    s.close()
    return out


def child_reopen(store: str, kind: str, path: Path) -> dict[str, Any]:
    import qdrant_client
    import qdrant_edge

    import tasks.vectors_edge

    del qdrant_client, qdrant_edge, tasks.vectors_edge  # imported, so not timed below
    queries = vectors(50, kind, seed=3)
    before = rss_mb()
    started = time.perf_counter()
    s: Local | Edge = STORES[store](path)
    s.search(queries[0])
    reopen = time.perf_counter() - started
    for query in queries[1:]:
        s.search(query)
    out = {"reopen_s": reopen, "rss_mb": rss_mb(), "rss_growth_mb": rss_mb() - before,
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # fmt: skip
    s.close()
    return out


def run_child(*args: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.bench_vectors", "--child", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    """Run every case and print one table, with ratios against local mode."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="20000,100000")
    parser.add_argument("--kinds", default="clustered,random")
    parser.add_argument("--baseline-max", type=int, default=20_000)
    parser.add_argument(
        "--baseline-kinds", default="clustered",
        help="kinds local mode runs on; its exact scan costs the same whatever the values",
    )  # fmt: skip
    parser.add_argument(
        "--efs", default="",
        help="extra search-time hnsw_ef values to measure on the built index (e.g. 256,512); "
        "the product's is tasks.vectors.HNSW_EF",
    )  # fmt: skip
    parser.add_argument("--child", nargs="+")
    args = parser.parse_args()
    if args.child:
        phase, store, *rest = args.child
        if phase == "build":
            efs = tuple(int(x) for x in rest[3].split(",") if x) if len(rest) > 3 else ()
            result = child_build(store, int(rest[0]), rest[1], Path(rest[2]), efs)
        else:
            result = child_reopen(store, rest[0], Path(rest[1]))
        print(json.dumps(result))  # noqa: T201
        return

    rows: list[tuple[str, int, str, dict[str, Any]]] = []
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-vectors-") as tmp:
        for n in (int(x) for x in args.sizes.split(",")):
            for kind in args.kinds.split(","):
                for store in ("local", "edge"):
                    if store == "local" and (
                        n > args.baseline_max or kind not in args.baseline_kinds.split(",")
                    ):
                        continue
                    path = Path(tmp) / f"{store}-{n}-{kind}"
                    built = run_child("build", store, str(n), kind, str(path), args.efs)
                    built |= run_child("reopen", store, kind, str(path))
                    rows.append((store, n, kind, built))
                    print(f"done: {store} {n} {kind}: {json.dumps(built)}", flush=True)  # noqa: T201
    report(rows, load, os.getloadavg()[0])


def report(rows: list[tuple[str, int, str, dict[str, Any]]], load0: float, load1: float) -> None:
    print(  # noqa: T201
        f"\nvector store alone, {DIM}-d, k={K}, {QUERIES} queries (load average {load0:.1f} "
        f"before, {load1:.1f} after, {os.cpu_count()} CPUs); ratios are local mode / this\n"
    )
    head = (f"{'store':<17} {'n':>7} {'vectors':<9} {'insert pts/s':>12} {'search p50':>10} "
            f"{'p99 ms':>7} {'recall@10':>9} {'reopen s':>8} {'RSS MB':>7}  "
            "vs local mode")  # fmt: skip
    print(head)  # noqa: T201
    base = {n: r for store, n, _, r in rows if store == "local"}
    for store, n, kind, r in rows:
        modes = [("exact", r["exact"])] + ([("hnsw", r["hnsw"])] if "hnsw" in r else [])
        modes += [(k, v) for k, v in r.items() if k.startswith("hnsw ef=")]
        for mode, s in modes:
            label = "local mode" if store == "local" else f"edge {mode}"
            rate = n / r["insert_s"]
            line = (f"{label:<17} {n:>7} {kind:<9} {rate:>12,.0f} {s['p50']:>10.1f} "
                    f"{s['p99']:>7.1f} {s['recall']:>9.3f} {r['reopen_s']:>8.2f} "
                    f"{r['rss_mb']:>7.0f}")  # fmt: skip
            at = n if n in base else max((m for m in base if m < n), default=None)
            b = base.get(at) if at is not None else None
            if b is not None and store != "local":
                if at != n:  # local mode was not run at this size: against its largest run
                    line += f"  [vs local mode at {at}]"
                line += (f"  insert x{rate / (at / b['insert_s']):.0f}, "
                         f"p50 x{b['exact']['p50'] / s['p50']:.0f}, "
                         f"p99 x{b['exact']['p99'] / s['p99']:.0f}, "
                         f"reopen x{b['reopen_s'] / r['reopen_s']:.0f}")  # fmt: skip
            print(line)  # noqa: T201
        if "optimize_s" in r:
            print(f"{'':<17} {'':>7} {'':<9} HNSW build (optimize) {r['optimize_s']:.1f} s")  # noqa: T201


if __name__ == "__main__":
    main()
