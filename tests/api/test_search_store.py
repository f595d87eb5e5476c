"""Search keeps local-mode Qdrant open between searches and lets go of it for index runs."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.search import LocalStoreHolder, SearchQuery, SearchResult, TextSearch
from photoindex.settings import Settings
from tests.clip_tiny import tiny_settings
from tests.loopback import LOOPBACK

# Another process, as an index run would be: for each folder read, says whether it could
# open the local store there ("free") or found it locked ("held").
PROBE = """
import sys
from qdrant_edge import EdgeShard
for line in sys.stdin:
    try:
        EdgeShard.load(line.strip()).close()
        print("free", flush=True)
    except Exception as err:
        print("held" if "WouldBlock" in str(err) else repr(err), flush=True)
"""
HOLD_LOCK = """
import sys, time
from qdrant_edge import EdgeShard
shard = EdgeShard.load(sys.argv[1])
print("held", flush=True)
sys.stdin.readline()
shard.close()
"""


@pytest.fixture(scope="module")
def library(tiny_clip: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A data folder with 40 vectors of the tiny model, written by the embed phase's path."""
    from tasks.models.registry import clip_embedder
    from tasks.vectors import VectorStore, close_clients

    settings = tiny_settings(
        tiny_clip,
        data_dir=tmp_path_factory.mktemp("search-data"),
        prefect_api_url="http://127.0.0.1:9/api",
    )
    model = clip_embedder(settings)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((40, model.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    payloads = [{"path": f"/photos/{i}.jpg", "sha256": f"{i:064x}"} for i in range(40)]
    VectorStore(model.model_id, settings).upsert(vectors, payloads)
    close_clients()
    return settings


def find(text_search: TextSearch, query: str, k: int) -> SearchResult:
    """One text search, from outside any event loop."""
    return asyncio.run(text_search.search(SearchQuery(text=query, k=k)))


def shard_dir(settings: Settings) -> Path:
    """The folder of the tiny model's shard (what another process would lock)."""
    from tasks.models.registry import clip_embedder
    from tasks.vectors import collection_name

    name = collection_name(clip_embedder(settings).model_id)
    return settings.qdrant_dir.resolve() / "shards" / name


@pytest.fixture(scope="module")
def probe() -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", PROBE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    yield proc
    proc.kill()
    proc.wait()


def lock_is_free(probe: subprocess.Popen[str], settings: Settings) -> bool:
    """Whether another process could open the local store now."""
    assert probe.stdin is not None and probe.stdout is not None
    probe.stdin.write(f"{shard_dir(settings)}\n")
    probe.stdin.flush()
    answer = probe.stdout.readline().strip()
    assert answer in {"free", "held"}, answer
    return answer == "free"


@pytest.fixture
def search(library: Settings) -> Iterator[TextSearch]:
    text_search = TextSearch(library, idle_close_s=1.5)
    yield text_search
    text_search.close()


def test_store_stays_open_between_searches_then_closes_when_idle(
    search: TextSearch, library: Settings, probe: subprocess.Popen[str]
) -> None:
    assert lock_is_free(probe, library)  # the probe is up (its start-up is slow)
    first = find(search, "a dog on the beach", 5)
    assert len(first.hits) == 5
    again = find(search, "a cat on a sofa", 5)
    assert search.local.opens == 1
    assert again.open_s < first.open_s
    assert not lock_is_free(probe, library), "the store stays open while searches come"
    time.sleep(2.5)
    assert lock_is_free(probe, library), "idle longer than idle_close_s: the lock is released"
    find(search, "a dog on the beach", 5)
    assert search.local.opens == 2


def test_idle_zero_closes_after_every_search(
    library: Settings, probe: subprocess.Popen[str]
) -> None:
    """The old behaviour, kept as the benchmark's baseline."""
    text_search = TextSearch(library, idle_close_s=0)
    for text in ("one", "two", "three"):
        find(text_search, text, 3)
    assert text_search.local.opens == 3
    assert lock_is_free(probe, library)


def test_text_embeddings_are_remembered(library: Settings) -> None:
    text_search = TextSearch(library, idle_close_s=0, text_cache_size=2)
    cold = find(text_search, "a red bicycle", 3)
    warm = find(text_search, "a red bicycle", 3)
    assert cold.encode_s > 0 and warm.encode_s == 0
    assert [h.path for h in warm.hits] == [h.path for h in cold.hits]
    find(text_search, "a blue car", 3)
    find(text_search, "a green boat", 3)  # evicts "a red bicycle"
    assert (find(text_search, "a red bicycle", 3)).encode_s > 0
    assert (find(text_search, "a green boat", 3)).encode_s == 0


def test_an_index_run_holding_the_store_makes_search_503_until_it_is_done(
    library: Settings,
) -> None:
    """While another process holds the local store, search answers 503 saying so."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(shard_dir(library))],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert holder.stdout is not None and holder.stdin is not None
    try:
        assert holder.stdout.readline().strip() == "held"
        app = create_app(library, text_search=TextSearch(library, idle_close_s=0.5))
        with TestClient(app, raise_server_exceptions=False, base_url=LOOPBACK) as client:
            busy = client.get("/api/v1/search", params={"q": "a dog"})
            assert busy.status_code == 503, busy.text
            assert "in use by another process" in busy.json()["detail"]
            holder.stdin.write("\n")
            holder.stdin.flush()
            holder.wait(30)
            ok = client.get("/api/v1/search", params={"q": "a dog", "k": 3})
            assert ok.status_code == 200, ok.text
            assert len(ok.json()["results"]) == 3
            timing = ok.headers["server-timing"]
            assert timing.startswith("encode;dur=") and "open;dur=" in timing
            assert "vectors;dur=" in timing
    finally:
        holder.kill()
        holder.wait()


def test_sustained_searches_still_let_go_of_the_store() -> None:
    """Searches that never pause: closed after max_hold_s, reopened after yield_s."""
    closes: list[float] = []

    class Recording(LocalStoreHolder):
        def _release(self) -> None:
            closes.append(time.monotonic())
            self._opened_at = None

    holder = Recording(idle_s=10, max_hold_s=0.3, yield_s=0.4)
    reopened: list[float] = []
    started = time.monotonic()
    while time.monotonic() - started < 1.2:
        before = holder.opens
        with holder.hold():
            if holder.opens > before:
                reopened.append(time.monotonic())
        time.sleep(0.02)
    holder.close()
    assert len(closes) >= 2, closes
    assert holder.opens >= 2
    gaps = [r - c for c, r in zip(closes, reopened[1:], strict=False)]
    assert gaps and min(gaps) >= 0.39, gaps
