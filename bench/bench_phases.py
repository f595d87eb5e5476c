"""Benchmark: each phase's throughput against the bare model loop, in the same run.

Embed: the `embed-images` subflow on a folder of N normal-size photos (1-3 MP), against a
real Prefect server, versus a bare loop that decodes each photo with
`tasks.decode.decode_image` at the phase's size, preprocesses it and runs the same
open_clip ViT-B-32 (random weights saved as safetensors, loaded through
PHOTOINDEX_CLIP_PRETRAINED like a user's local file) with the same batch size and
threads, with no Prefect, Qdrant or catalog. Faces: the `detect-faces` subflow versus
`FaceAnalyzer.analyze` on each decoded photo, one thread of control, same settings.

The bare loop and the phase alternate (`--repeats` times each), each phase run in a fresh
data folder, so the noise of the shared machine shows. Models are loaded before the
first timing, so neither side pays for loading. Ratio = phase images/s / bare images/s.

Run from the repository root: `.venv/bin/python -m bench.bench_phases` (`--n 24` for a smoke run).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

from bench import photoset
from bench.common import (
    DEFAULT_CACHE,
    RssSampler,
    cached_task_runs,
    configure,
    header,
    max_rss_self,
    mb,
    prepare_process,
    seed_face_models,
    summary_times,
    table,
    timed,
    workbench,
)

RUN_PHASE = "run_phase"


@dataclass
class Run:
    """One timed run of a bare loop or a phase."""

    label: str
    images: int
    wall_s: float
    parts: dict[str, float] = field(default_factory=dict)
    peak_rss: int = 0
    note: str = ""

    @property
    def per_s(self) -> float:
        return self.images / self.wall_s if self.wall_s > 0 else 0.0


def _images(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*.jpg"))


def bare_embed(paths: Sequence[str], batch: int, max_side: int | None) -> Run:
    """Decode, preprocess and embed in batches: the model with nothing around it."""
    import torch

    from photoindex.settings import get_settings
    from tasks.decode import decode_image
    from tasks.models.registry import clip_embedder

    model = clip_embedder(get_settings())
    parts: dict[str, float] = {}
    with RssSampler() as rss:
        started = time.perf_counter()
        for i in range(0, len(paths), batch):
            with timed(parts, "decode+preprocess"):
                chunk = paths[i : i + batch]
                decoded = [decode_image(p, max_side, 1.5).image for p in chunk]
                pixels = torch.stack([model.preprocess(img) for img in decoded])
            with timed(parts, "inference"):
                model.embed_tensors(pixels)
        wall = time.perf_counter() - started
    return Run("bare loop", len(paths), wall, parts, rss.peak)


def bare_faces(paths: Sequence[str], max_side: int | None) -> Run:
    """Decode each photo and run detector + aligner + encoder on it, one at a time."""
    from photoindex.settings import get_settings
    from tasks.decode import decode_image
    from tasks.face_inputs import FACE_SLACK
    from tasks.models.registry import face_analyzer

    analyzer = face_analyzer(get_settings())
    parts: dict[str, float] = {}
    faces = 0
    with RssSampler() as rss:
        started = time.perf_counter()
        for p in paths:
            with timed(parts, "decode"):
                bgr = decode_image(p, max_side, FACE_SLACK, order="BGR").pixels
            with timed(parts, "inference"):
                faces += len(analyzer.analyze(bgr))
        wall = time.perf_counter() - started
    return Run("bare loop", len(paths), wall, parts, rss.peak, note=f"{faces} faces")


def run_flow(
    flow: Callable[..., Any], folder: Path, data_dir: Path, cache: Path, n: int, faces: bool
) -> Run:
    """One subflow run in a fresh data folder, warm models, timed from call to return."""
    from prefect.settings import PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings

    from photoindex.settings import get_settings
    from tasks.faces import FacesPhase
    from tasks.models.registry import clip_embedder, face_analyzer
    from tasks.vectors import close_clients

    configure(data_dir, Path(get_settings().clip_pretrained))
    # Warm the cached model instances the phase will take, so it pays no loading either.
    if faces:
        seed_face_models(cache, data_dir)
        analyzer = getattr(FacesPhase(folder), "analyzer", None) or face_analyzer(get_settings())
        analyzer.load()
    else:
        clip_embedder(get_settings()).load()
    # Batch results persist where Prefect's settings say; a fresh place per run, so no run
    # takes another's results (the check below counts any cached batch all the same).
    results = {PREFECT_RESULTS_LOCAL_STORAGE_PATH: data_dir / "results"}
    with RssSampler() as rss, temporary_settings(updates=results):
        started = time.perf_counter()
        state = flow(str(folder), return_state=True)
        wall = time.perf_counter() - started
    close_clients()
    if not state.is_completed():
        raise RuntimeError(f"{getattr(flow, 'name', flow)} ended {state.type}: {state.message}")
    summary = state.result()
    run_id: UUID = state.state_details.flow_run_id
    cached = cached_task_runs(run_id)
    parts = {RUN_PHASE: float(summary.seconds), **summary_times(summary)}
    note = f"{summary.processed} new, {summary.reused} reused"
    if faces:
        from tasks.catalog import Catalog

        n_faces = Catalog(get_settings()).query("SELECT count(*) AS n FROM faces")[0]["n"]
        note += f", {n_faces} faces"
    persisted = sum(f.stat().st_size for f in (data_dir / "results").rglob("*") if f.is_file())
    note += f", results persisted {mb(persisted)}"
    if cached:
        note += f", {cached} CACHED batches (not computed!)"
    if summary.processed != n:
        note += f" (expected {n} new)"
    return Run("phase", int(summary.processed), wall, parts, rss.peak, note)


def report(title: str, runs: list[Run]) -> float:
    """Print the runs and the ratio; return the ratio of the summed rates."""
    print(f"\n-- {title}")
    keys: list[str] = []
    for r in runs:
        keys += [k for k in r.parts if k not in keys and k != RUN_PHASE]
    rows = []
    for r in runs:
        inside = r.parts.get(RUN_PHASE)
        rows.append(
            [r.label, r.images, r.wall_s, r.per_s, *(r.parts.get(k, "") for k in keys),
             r.wall_s - sum(r.parts.get(k, 0.0) for k in keys),
             "" if inside is None else r.wall_s - inside, mb(r.peak_rss), r.note]
        )  # fmt: skip
    print(
        table(
            ["run", "images", "wall s", "img/s", *(f"{k} s" for k in keys),
             "other s", "outside run_phase s", "peak RSS", "note"],
            rows,
        )  # fmt: skip
    )
    bare = [r for r in runs if r.label == "bare loop"]
    phase = [r for r in runs if r.label == "phase"]
    pairs = [p.per_s / b.per_s for b, p in zip(bare, phase, strict=False) if b.per_s > 0]
    overall = (sum(p.images for p in phase) / sum(p.wall_s for p in phase)) / (
        sum(b.images for b in bare) / sum(b.wall_s for b in bare)
    )
    print(
        "ratio phase/bare img/s: "
        + ", ".join(f"pair {i + 1} x{x:.2f}" for i, x in enumerate(pairs))
        + f"; all runs x{overall:.2f}"
    )
    return overall


NOTES = """\
  wall: bare loop from first decode to last result; phase from the subflow call to its return.
  phase parts come from its PhaseSummary (e.g. wait = the flow waiting on batches being read
  and computed, write = storing results); 'other' = wall minus the listed parts (for a phase:
  the flow run, discovery and hashing, progress, Prefect task overhead); 'outside run_phase'
  = wall minus PhaseSummary.seconds (the subflow's own Prefect cost)."""


def main() -> None:
    """Build the photo set, start Prefect, and time bare loops and phases alternately."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--size", choices=["normal", "phone", "small"], default="normal")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--phases", default="embed,faces")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args()

    prepare_process()
    folder = photoset.build(args.n, args.size, args.cache)
    bench = workbench("phases", args.cache, "warm")
    work, weights, api_url = bench.work, bench.weights, bench.api_url

    from flows.detect_faces import detect_faces
    from flows.embed_images import embed_images
    from photoindex.settings import get_settings
    from tasks.embed import EmbedPhase
    from tasks.faces import FacesPhase
    from tasks.models.registry import clip_embedder

    header("phase throughput vs the bare model loop")
    settings = get_settings()
    paths = _images(folder)
    print(f"photos: {photoset.describe(folder)}")
    print(f"Prefect: {api_url}; work folder: {work}")
    model = clip_embedder(settings)
    load = time.perf_counter()
    model.load()
    _ = model.model_id
    print(
        f"CLIP {model.model_id} loaded in {time.perf_counter() - load:.1f} s; batch "
        f"{settings.clip_batch_size}, threads {settings.threads}; face batch "
        f"{settings.face_batch_size}"
    )
    ratios: dict[str, float] = {}
    counter = iter(range(1000))
    if "embed" in args.phases:
        side = getattr(EmbedPhase, "max_side", None)
        print(f"embed decode size: max side {side}")
        runs: list[Run] = []
        for _ in range(args.repeats):
            runs.append(bare_embed(paths, settings.clip_batch_size, side))
            runs.append(run_flow(embed_images, folder, work / f"run-{next(counter)}", args.cache,
                                 len(paths), faces=False))  # fmt: skip
        ratios["embed"] = report(f"embed: {len(paths)} photos", runs)
    if "faces" in args.phases:
        configure(work / "warm", weights)
        seed_face_models(args.cache, work / "warm")
        side = getattr(FacesPhase, "max_side", None)
        print(f"\nfaces decode size: max side {side}")
        runs = []
        for _ in range(args.repeats):
            runs.append(bare_faces(paths, side))
            runs.append(run_flow(detect_faces, folder, work / f"run-{next(counter)}", args.cache,
                                 len(paths), faces=True))  # fmt: skip
        ratios["faces"] = report(f"faces: {len(paths)} photos", runs)
    print(NOTES)
    print(f"\npeak RSS of this process (getrusage): {mb(max_rss_self())}")
    print(
        "targets: "
        + ", ".join(
            f"{k} x{v:.2f} {'meets' if v >= 0.9 else 'misses'} >= 0.9"
            f"{' (beats the bare loop)' if v > 1.0 else ''}"
            for k, v in ratios.items()
        )
    )


if __name__ == "__main__":
    main()
