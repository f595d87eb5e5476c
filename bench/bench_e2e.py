"""Benchmark: a full indexing session end to end, against the model-only limit.

N phone-size photos (4032x3024 JPEG, quality 90). The session runs the way `photoindex
index` runs it: `create_session` on a real `prefect server` (started as the CLI starts
it), then `start_session_process`, timed from creating the run to the process's exit.
The limit is the sum of the model-only times measured in the same run: CLIP's forward
pass on already preprocessed tensors (same batch size and threads), the face detector on
already decoded photos, and the face encoder on the aligned faces found. No decoding,
preprocessing, alignment, storage or orchestration counts towards the limit. The limit is
measured before and after the session, so the machine's noise shows.

Run from the repository root: `.venv/bin/python -m bench.bench_e2e` (`--n 12` to smoke).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import photoset
from bench.common import (
    DEFAULT_CACHE,
    RssSampler,
    RunTimes,
    configure,
    header,
    mb,
    prepare_process,
    seed_face_models,
    session_runs,
    table,
    timed,
    workbench,
)

MODEL_PARTS = ("CLIP forward", "face detector", "face encoder")


@dataclass
class Limit:
    """Model-only seconds, and the non-model work a minimal program would also do."""

    parts: dict[str, float] = field(default_factory=dict)
    faces: int = 0

    @property
    def seconds(self) -> float:
        return sum(self.parts.get(k, 0.0) for k in MODEL_PARTS)


def measure_limit(paths: list[str]) -> Limit:
    """Time each model on inputs prepared outside the timing."""
    import numpy as np
    import torch

    from photoindex.settings import get_settings
    from tasks.decode import decode_image
    from tasks.embed import EmbedPhase
    from tasks.faces import FacesPhase
    from tasks.models.registry import clip_embedder, face_analyzer

    settings = get_settings()
    model = clip_embedder(settings)
    analyzer = face_analyzer(settings)
    model.load()
    analyzer.load()
    detector, encoder = analyzer.detector, analyzer.encoder
    out = Limit()
    parts = out.parts
    embed_side = getattr(EmbedPhase, "max_side", None)
    faces_side = getattr(FacesPhase, "max_side", None)
    batch = settings.clip_batch_size
    for i in range(0, len(paths), batch):
        with timed(parts, f"decode at {embed_side} px"):
            images = [decode_image(p, embed_side).image for p in paths[i : i + batch]]
        with timed(parts, "CLIP preprocess"):
            pixels = torch.stack([model.preprocess(img) for img in images])
        with timed(parts, "CLIP forward"):
            model.embed_tensors(pixels)
    for p in paths:
        with timed(parts, f"decode at {faces_side} px"):
            rgb = np.asarray(decode_image(p, faces_side).image)
            bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        with timed(parts, "face detector"):
            boxes, kpss = detector.detect(bgr, max_num=0)
        for box, kps in zip(boxes, kpss, strict=True):
            x1, y1, x2, y2 = (float(v) for v in box[:4])
            if min(x2 - x1, y2 - y1) < analyzer.min_face_size:
                continue
            with timed(parts, "face align"):
                crop = encoder.align(bgr, kps)
            with timed(parts, "face encoder"):
                encoder.embed(crop)
            out.faces += 1
    return out


@dataclass
class Session:
    """One session run through the user's path, with its Prefect timeline."""

    session_id: str
    wall_s: float
    started_at: float
    exited_at: float
    runs: list[RunTimes]
    peak_rss: int
    returncode: int
    results_bytes: int
    counts: str = ""


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def run_session(folder: Path, data_dir: Path, weights: Path, cache: Path) -> Session:
    """Create the session and run it in its own process, as `photoindex index` does."""
    from photoindex.launch import create_session, start_session_process

    configure(data_dir, weights)
    seed_face_models(cache, data_dir)  # converting the face models is a one-time install step
    # Where Prefect persists batch results: this session's own data folder.
    os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = str(data_dir / "results")
    started = time.time()
    tick = time.perf_counter()
    session_id = asyncio.run(create_session(folder.resolve(), faces=True))
    proc = start_session_process(session_id)
    with RssSampler(proc.pid) as rss:
        code = proc.wait()
    wall = time.perf_counter() - tick
    exited = time.time()
    return Session(
        str(session_id), wall, started, exited, session_runs(session_id), rss.peak, code,
        _du(data_dir / "results"), catalog_counts(),
    )  # fmt: skip


def catalog_counts() -> str:
    """What the session stored, from the configured data folder's catalog."""
    from photoindex.settings import get_settings
    from tasks.catalog import Catalog

    row = Catalog(get_settings()).query(
        "SELECT (SELECT count(*) FROM images WHERE status = 'indexed') AS images, "
        "(SELECT count(*) FROM faces) AS faces, (SELECT count(*) FROM persons) AS persons"
    )[0]
    return (
        f"catalog: {row['images']} photos indexed, {row['faces']} faces, "
        f"{row['persons']} persons"
    )


def report(session: Session, limits: list[Limit], n: int) -> None:
    """The ratio, and where the session's time went."""
    limit_s = statistics.fmean(lim.seconds for lim in limits)
    print("\n-- model-only limit (measured before and after the session)")
    keys: list[str] = []
    for lim in limits:
        keys += [k for k in lim.parts if k not in keys]
    rows: list[list[object]] = [
        [k + (" (limit)" if k in MODEL_PARTS else ""), *(lim.parts.get(k, 0.0) for lim in limits),
         f"{1000 * statistics.fmean(lim.parts.get(k, 0.0) for lim in limits) / n:.1f}"]
        for k in keys
    ]  # fmt: skip
    rows.append(["limit = sum of model parts", *(lim.seconds for lim in limits),
                 f"{1000 * limit_s / n:.1f}"])  # fmt: skip
    heads = [f"run {i + 1} s" for i in range(len(limits))]
    print(table(["part", *heads, "ms/photo"], rows))
    print(f"faces found: {', '.join(str(lim.faces) for lim in limits)}")

    print(f"\n-- session {session.session_id} (exit code {session.returncode})")
    parent, phases = session.runs[0], session.runs[1:]
    timeline: list[list[object]] = []
    cursor = session.started_at

    def span(label: str, start: float | None, end: float | None) -> None:
        nonlocal cursor
        if start is None or end is None:
            timeline.append([label, "?", ""])
            return
        timeline.append([label, end - start, f"{100 * (end - start) / session.wall_s:.0f}%"])
        cursor = end

    span("create run + start process + imports, until the session runs", cursor, parent.start)
    for run in phases:
        if run.start is not None and run.start - cursor > 0.05:
            span("  between phases (session flow)", cursor, run.start)
        span(f"  {run.flow} ({run.state.lower()})", run.start, run.end)
    span("  after the last phase (DuckDB file, session end)", cursor, parent.end)
    span("session end to process exit", cursor, session.exited_at)
    timeline.append(["session wall (create to exit)", session.wall_s, "100%"])
    print(table(["part", "seconds", "of wall"], timeline))
    print(session.counts)
    by_flow = {r.flow: r.seconds or 0.0 for r in phases}
    mean = {k: statistics.fmean(lim.parts.get(k, 0.0) for lim in limits) for k in keys}
    embed_s, faces_s = by_flow.get("embed-images", 0.0), by_flow.get("detect-faces", 0.0)
    print(
        f"embed phase {embed_s:.1f} s vs CLIP forward {mean['CLIP forward']:.1f} s "
        f"(x{embed_s / max(mean['CLIP forward'], 1e-9):.2f}); "
        f"faces phase {faces_s:.1f} s vs detector+encoder "
        f"{mean['face detector'] + mean.get('face encoder', 0.0):.1f} s "
        f"(x{faces_s / max(mean['face detector'] + mean.get('face encoder', 0.0), 1e-9):.2f})"
    )
    print(
        f"peak RSS of the session process tree: {mb(session.peak_rss)}; batch results "
        f"persisted on disk: {mb(session.results_bytes)}"
    )
    ratio = session.wall_s / limit_s
    verdict = "meets" if ratio <= 1.5 else "misses"
    print(
        f"\nRATIO session wall / model-only limit: {session.wall_s:.1f} s / {limit_s:.1f} s = "
        f"x{ratio:.2f} ({verdict} target <= 1.5, aim 1.2; limits "
        f"{', '.join(f'{lim.seconds:.1f}' for lim in limits)} s)"
    )


def main() -> None:
    """Build the phone-size set, start Prefect, measure the limit, the session, the limit."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--size", choices=["normal", "phone", "small"], default="phone")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args()

    prepare_process()
    folder = photoset.build(args.n, args.size, args.cache)
    bench = workbench("e2e", args.cache, "bench")
    work, weights, api_url = bench.work, bench.weights, bench.api_url
    seed_face_models(args.cache, work / "bench")
    from photoindex.settings import get_settings
    from tasks.models.registry import clip_embedder

    header("end to end: a full session vs the model-only limit")
    print(f"photos: {photoset.describe(folder)}")
    print(f"Prefect: {api_url}; work folder: {work}")
    settings = get_settings()
    tick = time.perf_counter()
    clip_embedder(settings).load()
    print(
        f"CLIP load in this process: {time.perf_counter() - tick:.1f} s (the session process "
        f"pays it too); batch {settings.clip_batch_size}, threads {settings.threads}"
    )
    paths = sorted(str(p) for p in folder.rglob("*.jpg"))
    limits = [measure_limit(paths)]
    session = run_session(folder, work / "session", weights, args.cache)
    configure(work / "bench", weights)
    limits.append(measure_limit(paths))
    report(session, limits, len(paths))


if __name__ == "__main__":
    main()
