"""Benchmark: latency of GET /api/v1/search with 10k vectors in the embedded vector store.

Builds a data folder in a temp dir and inserts 10k vectors through the embed phase's own
path (`VectorStore.upsert`, batches of 500, the phase's payload fields). The vectors are
random unit vectors of the model's width: below 10k new points the store searches by
exact scan, comparing the query with every vector, so their values do not change the work
(`bench.bench_vectors` measures the store alone, HNSW and recall included). The model is
ViT-B-32, the default architecture, with seeded random weights
(`bench.common.clip_weights`; same compute as real weights), or the tests' tiny model with
`--tiny`.

The real app (`api.app.create_app`) then answers in-process through httpx's
ASGITransport, one request at a time. Each request's time is split with the endpoint's
`Server-Timing` header into the CLIP text encoder (`encode`), opening the vector store
(`open`) and the vector search (`vectors`); "excl. encoder" is the request's time minus
`encode`.

Runs, all in this process:
- new, distinct texts: the store stays open between searches; every text is new, so
  the encoder runs each time;
- new, repeated texts: texts searched before, so their embeddings are remembered;
- baseline: the old path, measured in the same run: open the store for every
  search and close it after (and no remembered embeddings), i.e. `TextSearch(...,
  idle_close_s=0, text_cache_size=0)`.
The new path's app is warmed up first (model loaded, store opened), so its runs show the
steady state while searches keep coming; the baseline pays the opening every time.

Run from the repository root: `.venv/bin/python -m bench.bench_search`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import numpy as np

from bench.common import DEFAULT_CACHE, clip_weights, prepare_process

if TYPE_CHECKING:
    from api.search import TextSearch
    from photoindex.settings import Settings

BATCH = 500
WORDS = (
    "dog cat beach mountain snow city night sunset forest river child bicycle car boat "
    "birthday cake wedding dress garden flower market street concert stage kitchen table"
).split()


@dataclass
class Run:
    """Latencies of one run, in milliseconds."""

    label: str
    total: list[float] = field(default_factory=list)
    encode: list[float] = field(default_factory=list)
    open: list[float] = field(default_factory=list)
    vectors: list[float] = field(default_factory=list)

    @property
    def search_side(self) -> list[float]:
        return [t - e for t, e in zip(self.total, self.encode, strict=True)]

    def row(self) -> str:
        def qs(xs: list[float]) -> str:
            return f"{q(xs, 0.5):7.1f} {q(xs, 0.99):7.1f}"

        return (
            f"{self.label:<26} {len(self.total):>4}  {qs(self.total)} {max(self.total):7.1f}  "
            f"{qs(self.search_side)}  {qs(self.encode)}  {qs(self.open)}  {qs(self.vectors)}"
        )


HEADER = (
    f"{'run':<26} {'n':>4}  {'request p50':>11} {'p99':>7} {'max':>7}  "
    f"{'excl. encoder p50':>17} {'p99':>5}  {'encode p50':>10} {'p99':>5}  "
    f"{'open p50':>8} {'p99':>5}  {'vectors p50':>11} {'p99':>5}"
)


def q(values: list[float], quantile: float) -> float:
    """Nearest-rank quantile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(np.ceil(quantile * len(ordered))) - 1))]


def texts(n: int, seed: int) -> list[str]:
    """n distinct search texts of 3-6 words."""
    rng = np.random.default_rng(seed)
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        words = rng.choice(WORDS, size=int(rng.integers(3, 7)))
        text = "a photo of " + " ".join(str(w) for w in words)
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def build_library(data_dir: Path, tiny: bool, n: int, cache: Path) -> Settings:
    """Settings for a data folder holding n random unit vectors; and the insert seconds."""
    from photoindex.settings import Settings
    from tasks.models.registry import clip_embedder
    from tasks.vectors import VectorStore, close_clients

    if tiny:
        from tests.clip_tiny import build_tiny_clip

        config, weights = build_tiny_clip(cache / "tiny-clip")
        settings = Settings(
            data_dir=data_dir, clip_model=config.stem, clip_pretrained=str(weights),
            clip_config=config, prefect_api_url="http://127.0.0.1:9/api",
        )
    else:
        settings = Settings(
            data_dir=data_dir, clip_model="ViT-B-32", clip_pretrained=str(clip_weights(cache)),
            clip_config=None, prefect_api_url="http://127.0.0.1:9/api",
        )
    model = clip_embedder(settings)
    dim = model.dim
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    for start in range(0, n, BATCH):
        count = min(BATCH, n - start)
        vectors = rng.standard_normal((count, dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        payloads = [
            {
                "path": f"/photos/library/{i // 1000:03d}/IMG_{i:06d}.jpg",
                "sha256": f"{i:064x}",
                "width": 4032,
                "height": 3024,
                "indexed_at": "2026-01-12T10:00:00+00:00",
            }
            for i in range(start, start + count)
        ]
        VectorStore(model.model_id, settings).upsert(vectors, payloads)
    inserted = time.perf_counter() - started
    assert VectorStore(model.model_id, settings).count() == n
    close_clients()
    print(f"model {model.model_id.split(':')[0]}, width {dim}; inserted {n} vectors in "
          f"{inserted:.0f} s")
    return settings


def timing(header: str) -> dict[str, float]:
    """`Server-Timing` as {name: ms}."""
    out: dict[str, float] = {}
    for part in header.split(","):
        name, _, rest = part.strip().partition(";dur=")
        out[name] = float(rest)
    return out


async def drive(client: httpx.AsyncClient, label: str, queries: list[str], k: int) -> Run:
    """Send `queries` one after another; record each request's time and its split."""
    run = Run(label)
    for text in queries:
        started = time.perf_counter()
        response = await client.get("/api/v1/search", params={"q": text, "k": k})
        run.total.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.text
        assert len(response.json()["results"]) == k
        split = timing(response.headers["server-timing"])
        run.encode.append(split["encode"])
        run.open.append(split["open"])
        run.vectors.append(split["vectors"])
    return run


@asynccontextmanager
async def served(
    settings: Settings, idle_close_s: float | None = None, text_cache_size: int | None = None
) -> AsyncIterator[tuple[httpx.AsyncClient, TextSearch]]:
    """A fresh app with its own TextSearch (defaults: the API's), answering in-process."""
    from api.app import create_app
    from api.search import IDLE_CLOSE_S, TEXT_CACHE_SIZE, TextSearch

    text_search = TextSearch(
        settings,
        idle_close_s=IDLE_CLOSE_S if idle_close_s is None else idle_close_s,
        text_cache_size=TEXT_CACHE_SIZE if text_cache_size is None else text_cache_size,
    )
    app = create_app(settings, text_search=text_search)
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            yield client, text_search
    finally:
        text_search.close()


async def scenario(settings: Settings, args: argparse.Namespace) -> list[Run]:
    """The new path (distinct, then repeated texts) and the baseline, in this order."""
    distinct_texts = texts(args.requests, seed=1)
    recent = distinct_texts[-20:]  # still among the remembered embeddings
    repeated_texts = [recent[i % len(recent)] for i in range(args.requests)]
    async with served(settings) as (client, text_search):
        # Loads the model and opens the store: the runs below measure the steady state;
        # the cost of opening the store shows in the baseline's `open` column.
        await drive(client, "warm-up", texts(5, seed=99), args.k)
        distinct = await drive(client, "new, distinct texts", distinct_texts, args.k)
        repeated = await drive(client, "new, repeated texts", repeated_texts, args.k)
    print(f"new path: the local store was opened {text_search.local.opens} time(s) for "
          f"{2 * args.requests} searches")
    async with served(settings, idle_close_s=0.0, text_cache_size=0) as (client, _):
        baseline_texts = texts(args.baseline_requests, seed=2)
        baseline = await drive(client, "baseline: open per search", baseline_texts, args.k)
    return [distinct, repeated, baseline]


def main() -> None:
    """Build the library, run the three workloads and print the table and the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vectors", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=300, help="per new-path run")
    parser.add_argument("--baseline-requests", type=int, default=40)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--tiny", action="store_true", help="the tests' 64-d model")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args()
    prepare_process()

    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        settings = build_library(Path(tmp) / "data", args.tiny, args.vectors, args.cache)
        load_before = os.getloadavg()[0]
        runs = asyncio.run(scenario(settings, args))
        load_after = os.getloadavg()[0]

    print(
        f"\nGET /api/v1/search, k={args.k}, {args.vectors} vectors, embedded Qdrant; ms "
        f"(load average {load_before:.1f} before, {load_after:.1f} after, "
        f"{os.cpu_count()} CPUs)"
    )
    print(HEADER)
    for run in runs:
        print(run.row())
    distinct, repeated, baseline = runs
    print(
        "\nbaseline / new (both encode every text): "
        f"request p50 x{q(baseline.total, 0.5) / q(distinct.total, 0.5):.1f}, "
        f"p99 x{q(baseline.total, 0.99) / q(distinct.total, 0.99):.1f}; "
        f"excl. encoder p50 x{q(baseline.search_side, 0.5) / q(distinct.search_side, 0.5):.1f}, "
        f"p99 x{q(baseline.search_side, 0.99) / q(distinct.search_side, 0.99):.1f}"
    )
    target = q(distinct.search_side, 0.99)
    print(
        f"new path, excl. encoder: p99 {target:.1f} ms "
        f"({'under' if target < 50 else 'NOT under'} the 50 ms target); "
        f"with remembered texts the whole request: p99 {q(repeated.total, 0.99):.1f} ms; "
        f"encoder alone p50 {statistics.median(distinct.encode):.1f} ms"
    )


if __name__ == "__main__":
    main()
