"""The vector store: the embedded engine, the server backend's filters, the local-mode migration."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import QdrantClient, models

import tasks.vectors as vectors
from photoindex.settings import Settings
from tasks.vectors import (
    SearchFilter,
    VectorStore,
    VectorStoreBusy,
    close_clients,
    collection_name,
    optimize_if_worth_it,
    point_id,
    stored_points,
)
from tasks.vectors_edge import LOCAL_MODE_BACKUP
from tasks.vectors_server import ServerBackend

MODEL = "tiny:test"
DIM = 32


def unit(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


def payload(i: int) -> dict[str, object]:
    """What the embed phase stores: path, sha256, size, times."""
    return {
        "path": f"/photos/{i:03d}.jpg",
        "sha256": f"{i:064x}",
        "width": 640,
        "height": 480,
        "indexed_at": "2026-01-12T10:00:00+00:00",
        "taken_at": f"2020-{i % 12 + 1:02d}-15T12:00:00",
        "taken_at_source": "exif",
    }


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    yield Settings(data_dir=tmp_path / "data")
    close_clients()


def write_local_mode(
    folder: Path,
    model_id: str,
    vecs: np.ndarray,
    payloads: list[dict[str, object]],
    moved: str | None = None,
) -> None:
    """A folder as photoindex wrote it before the embedded engine (qdrant-client local mode,
    `tasks/vectors.py` at ea3cba1): one collection per model, points upserted by content
    id, then (with `moved`, a sha256) that photo's path moved with set_payload."""
    client = QdrantClient(path=str(folder))
    name = collection_name(model_id)
    client.create_collection(
        name,
        vectors_config=models.VectorParams(size=vecs.shape[1], distance=models.Distance.COSINE),
        metadata={"model": model_id},
    )
    client.upsert(
        name,
        points=[
            models.PointStruct(id=point_id(str(p["sha256"])), vector=v.tolist(), payload=p)
            for v, p in zip(vecs, payloads, strict=True)
        ],
    )
    if moved is not None:
        client.batch_update_points(
            name,
            update_operations=[
                models.SetPayloadOperation(
                    set_payload=models.SetPayload(
                        payload={"path": "/moved/000.jpg"}, points=[point_id(moved)]
                    )
                )
            ],
        )
    client.close()


def test_a_local_mode_folder_is_migrated_with_ids_vectors_and_payloads(
    settings: Settings,
) -> None:
    old_payloads = [
        {k: v for k, v in payload(i).items() if not k.startswith("taken_at")} for i in range(300)
    ]
    vecs = unit(300)
    write_local_mode(settings.qdrant_dir, MODEL, vecs, old_payloads, moved=f"{0:064x}")
    assert (settings.qdrant_dir / "meta.json").is_file()

    store = VectorStore(MODEL, settings)
    assert store.count() == 300
    want = {point_id(str(p["sha256"])) for p in old_payloads}
    assert store.ids() == want
    shas = [str(p["sha256"]) for p in old_payloads]
    got = store.payloads(shas)
    assert got[shas[0]]["path"] == "/moved/000.jpg"
    assert got[shas[7]] == old_payloads[7]
    stored = store.vectors(shas)
    np.testing.assert_allclose(np.stack([stored[s] for s in shas]), vecs, atol=1e-5)
    top = store.search(vecs[42], 1)
    assert top[0][2]["sha256"] == shas[42] and top[0][1] == pytest.approx(1.0, abs=1e-4)

    # Local mode's files are kept aside, and nothing migrates twice.
    assert not (settings.qdrant_dir / "meta.json").exists()
    assert (settings.qdrant_dir / LOCAL_MODE_BACKUP / "meta.json").is_file()
    close_clients()
    assert VectorStore(MODEL, settings).count() == 300
    assert list(stored_points(settings)) == [collection_name(MODEL)]


def test_a_shard_held_by_another_process_is_busy_then_free(settings: Settings) -> None:
    VectorStore(MODEL, settings).upsert(unit(5), [payload(i) for i in range(5)])
    close_clients()
    shard = settings.qdrant_dir.resolve() / "shards" / collection_name(MODEL)
    hold = (
        "import sys\nfrom qdrant_edge import EdgeShard\ns = EdgeShard.load(sys.argv[1])\n"
        "print('held', flush=True)\nsys.stdin.readline()\ns.close()\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", hold, str(shard)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdin is not None and holder.stdout is not None
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(VectorStoreBusy, match="in use by another process"):
            VectorStore(MODEL, settings, wait_s=0.2)
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert VectorStore(MODEL, settings, wait_s=30).count() == 5  # waits its turn
    finally:
        holder.kill()
        holder.wait()


def _filters_hold(store: VectorStore) -> None:
    vecs = unit(60)
    store.upsert(vecs, [payload(i) for i in range(60)])
    query = vecs[3]
    assert store.search(query, 1)[0][2]["sha256"] == f"{3:064x}"

    strong = store.search(query, 60, min_score=0.3)
    assert strong and all(score >= 0.3 for _, score, _ in strong)
    assert len(strong) < 60

    june = store.search(
        query, 60, SearchFilter(after=datetime(2020, 6, 1), before=datetime(2020, 7, 1))
    )
    assert {h[2]["taken_at"] for h in june} == {"2020-06-15T12:00:00"}
    assert len(june) == 5

    only = frozenset(f"{i:064x}" for i in (1, 2, 3, 4))
    mine = store.search(query, 10, SearchFilter(only=only, exclude=frozenset([f"{3:064x}"])))
    assert {h[2]["sha256"] for h in mine} == only - {f"{3:064x}"}
    assert store.search(query, 10, SearchFilter(only=frozenset())) == []


def test_search_filters_on_the_embedded_engine(settings: Settings) -> None:
    _filters_hold(VectorStore(MODEL, settings))


def test_search_filters_on_the_server_backend(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same filters through qdrant-client (in memory here: no Qdrant server on PyPI)."""
    server = Settings(data_dir=settings.data_dir, qdrant_url="http://qdrant.invalid:6333")
    monkeypatch.setitem(
        vectors._backends, server.qdrant_url or "", ServerBackend(QdrantClient(":memory:"))
    )
    store = VectorStore(MODEL, server)
    _filters_hold(store)
    assert store.optimize_if_worth_it() is False  # a server indexes by itself


def test_hnsw_is_built_only_when_many_points_wait_for_it(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Qdrant indexes segments above 10 MB: 5,500 vectors of 512 floats.
    store = VectorStore(MODEL, settings)
    vecs = unit(5500, dim=512, seed=1)
    for start in range(0, 5500, 500):
        store.upsert(vecs[start : start + 500], [payload(i) for i in range(start, start + 500)])
    assert optimize_if_worth_it(settings) == []  # below INDEX_MIN_UNINDEXED: exact scan stays
    monkeypatch.setattr(vectors, "INDEX_MIN_UNINDEXED", 5000)
    assert optimize_if_worth_it(settings) == [collection_name(MODEL)]
    assert store.backend.unindexed(store.collection) < 5000
    assert store.search(vecs[10], 1)[0][2]["sha256"] == f"{10:064x}"
    started = time.monotonic()
    assert optimize_if_worth_it(settings) == []  # nothing new since ...
    assert time.monotonic() - started < 10  # ... and not for want of the shard
