"""Benchmark: a full indexing session end to end, against the model-only and honest limits.

N phone-size photos (4032x3024 JPEG, quality 90; `--size mixed`: small, normal and phone
sizes by turns, a few of them PNG, see bench.photoset). The session runs the way `photoindex
index` runs it: `create_session` on a real `prefect server` (started as the CLI starts
it), then `start_session_process`, timed from creating the run to the process's exit.

Two limits, both measured in the same run, before and after the session (so the machine's
noise shows):
- model-only: CLIP's forward pass on already preprocessed tensors (same batch size and
  threads), the face detector on already decoded photos and the face encoder on the
  aligned faces found. No decoding, preprocessing, alignment, storage or orchestration.
- honest: the models plus one decode of each photo at the minimal scale both photo phases
  can use (the faces' scale; aligned crops need it), with the fastest decoder
  (`tasks.decode.decode_image`: simplejpeg for JPEG).
The first measurement also times the decoders the session no longer uses (Pillow at
both phases' sizes, as before issue 15), for the record.

Each photo phase is also set against its bare loop: the same work as a plain sequential
loop (embed: one decode, the face detector and aligner, CLIP's preprocess and forward;
faces: the face encoder), printed as bare seconds / phase seconds (>= 1.0: no overhead).

Run from the repository root: `.venv/bin/python -m bench.bench_e2e` (`--n 12` to smoke;
`--folder` to reuse a photo set already built by bench.photoset).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from uuid import UUID

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
ONE_DECODE = "one decode (fastest decoder, faces' scale)"
HONEST_PARTS = (*MODEL_PARTS, ONE_DECODE)
CLIP_PREP = "CLIP reduce + preprocess"
ALIGN = "face align"
# What each photo phase runs, as a bare loop (the embed phase finds the faces too).
BARE = {
    "embed-images": (ONE_DECODE, "face detector", ALIGN, CLIP_PREP, "CLIP forward"),
    "detect-faces": ("face encoder",),
}


@dataclass
class Limit:
    """Model-only seconds, and the non-model work a minimal program would also do."""

    parts: dict[str, float] = field(default_factory=dict)
    faces: int = 0

    @property
    def seconds(self) -> float:
        return sum(self.parts.get(k, 0.0) for k in MODEL_PARTS)

    @property
    def honest(self) -> float:
        """The models plus one decode at the minimal scale with the fastest decoder."""
        return sum(self.parts.get(k, 0.0) for k in HONEST_PARTS)


def measure_limit(paths: list[str], decoders: bool = False) -> Limit:
    """Time each model on inputs prepared outside the timing, and the one decode."""
    import numpy as np
    import torch

    from photoindex.settings import get_settings
    from tasks.decode import decode_image
    from tasks.embed import EmbedPhase
    from tasks.face_inputs import FACE_SIDE, FACE_SLACK
    from tasks.images import ImagePhase
    from tasks.models.registry import clip_embedder, face_analyzer

    settings = get_settings()
    model = clip_embedder(settings)
    analyzer = face_analyzer(settings)
    model.load()
    analyzer.load()
    detector, encoder = analyzer.detector, analyzer.encoder
    out = Limit()
    parts = out.parts
    clip_side, slack = EmbedPhase.clip_side, ImagePhase.side_slack
    batch = settings.clip_batch_size
    for path in paths:  # the file's bytes in the page cache, as the session finds them
        Path(path).read_bytes()
    for i in range(0, len(paths), batch):
        chunk = paths[i : i + batch]
        tensors = []
        for p in chunk:  # a minimal program: decode a photo, use it, let it go
            with timed(parts, ONE_DECODE):
                decoded = decode_image(p, FACE_SIDE, FACE_SLACK, order="BGR")
            with timed(parts, CLIP_PREP):
                tensors.append(model.preprocess(decoded.reduced(clip_side, slack).image))
            bgr = decoded.pixels
            with timed(parts, "face detector"):
                boxes, kpss = detector.detect(bgr)
            for box, kps in zip(boxes, kpss, strict=True):
                x1, y1, x2, y2 = (float(v) for v in box[:4])
                if min(x2 - x1, y2 - y1) < analyzer.min_face_size:
                    continue
                with timed(parts, ALIGN):
                    crop = encoder.align(bgr, kps)
                with timed(parts, "face encoder"):
                    encoder.embed(crop)
                out.faces += 1
            del decoded, bgr
            if not decoders:
                continue
            # For the record: what the two decodes of each photo cost before (Pillow, twice).
            with timed(parts, f"was: Pillow decode at {clip_side} px"):
                decode_image(p, clip_side, slack, decoder="pillow")
            with timed(parts, f"was: Pillow decode at {FACE_SIDE} px + BGR"):
                rgb = decode_image(p, FACE_SIDE, FACE_SLACK, decoder="pillow").pixels
                np.ascontiguousarray(rgb[:, :, ::-1])
            with timed(parts, f"Pillow, once at {FACE_SIDE} px, BGR"):
                decode_image(p, FACE_SIDE, FACE_SLACK, order="BGR", decoder="pillow")
        with timed(parts, "CLIP forward"):
            model.embed_tensors(torch.stack(tensors))
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


def run_warm_session(folder: Path, data_dir: Path, weights: Path, cache: Path) -> Session:
    """Hand the session to a warm indexer (models loaded), as `photoindex serve`'s API does.

    Timed from the request to the session's end; the indexer stays up, so there is no exit.
    """
    from bench.bench_warm_start import start_indexer
    from photoindex.launch import submit_session

    configure(data_dir, weights)
    seed_face_models(cache, data_dir)
    os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = str(data_dir / "results")
    indexer = start_indexer(data_dir / "indexer.log")
    try:
        with RssSampler(indexer.pid) as rss:
            started = time.time()
            tick = time.perf_counter()
            launched = submit_session(folder.resolve(), faces=True)
            if launched.route != "warm":
                raise RuntimeError(f"the session ran {launched.route}, not on the warm indexer")
            state = asyncio.run(_wait_final(launched.session_id))
            wall = time.perf_counter() - tick
            exited = time.time()
    finally:
        indexer.terminate()
        indexer.wait(60)
    code = 0 if state == "COMPLETED" else 1
    return Session(
        str(launched.session_id), wall, started, exited, session_runs(launched.session_id),
        rss.peak, code, _du(data_dir / "results"), catalog_counts(),
    )  # fmt: skip


async def _wait_final(session_id: UUID) -> str:
    """Poll the session's run until it is in a final state; return that state's type."""
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        while True:
            run = await client.read_flow_run(session_id)
            if run.state is not None and run.state.is_final():
                return run.state.type.value
            await asyncio.sleep(0.1)


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
    """The ratios, and where the session's time went."""
    limit_s = statistics.fmean(lim.seconds for lim in limits)
    honest_s = statistics.fmean(lim.honest for lim in limits)
    print("\n-- limits (measured before and after the session)")
    keys: list[str] = []
    for lim in limits:
        keys += [k for k in lim.parts if k not in keys]
    def tag(k: str) -> str:
        return " (models)" if k in MODEL_PARTS else " (honest)" if k in HONEST_PARTS else ""

    rows: list[list[object]] = [
        [k + tag(k), *(lim.parts.get(k, "") for lim in limits),
         f"{1000 * statistics.fmean(lim.parts.get(k, 0.0) for lim in limits) / n:.1f}"]
        for k in keys
    ]  # fmt: skip
    rows.append(["model-only limit = sum of model parts", *(lim.seconds for lim in limits),
                 f"{1000 * limit_s / n:.1f}"])  # fmt: skip
    rows.append(["honest limit = models + one decode", *(lim.honest for lim in limits),
                 f"{1000 * honest_s / n:.1f}"])  # fmt: skip
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
    span("session end to process exit (warm: to the bench seeing it end)", cursor,
         session.exited_at)  # fmt: skip
    timeline.append(["session wall (create to exit)", session.wall_s, "100%"])
    print(table(["part", "seconds", "of wall"], timeline))
    print(session.counts)
    by_flow = {r.flow: r.seconds or 0.0 for r in phases}
    mean = {k: statistics.fmean(lim.parts.get(k, 0.0) for lim in limits) for k in keys}
    for flow, bare_parts in BARE.items():
        phase_s, bare_s = by_flow.get(flow, 0.0), sum(mean.get(k, 0.0) for k in bare_parts)
        print(
            f"PHASE {flow} {phase_s:.1f} s vs its bare loop {bare_s:.1f} s "
            f"({' + '.join(bare_parts)}): bare/phase x{bare_s / max(phase_s, 1e-9):.2f} "
            f"(target >= 1.0)"
        )
    print(
        f"peak RSS of the session process tree: {mb(session.peak_rss)}; batch results "
        f"persisted on disk: {mb(session.results_bytes)}"
    )
    ratio = session.wall_s / limit_s
    print(
        f"\nRATIO session wall / model-only limit: {session.wall_s:.1f} s / {limit_s:.1f} s = "
        f"x{ratio:.2f} (limits {', '.join(f'{lim.seconds:.1f}' for lim in limits)} s)"
    )
    honest = session.wall_s / honest_s
    verdict = "meets" if honest <= 1.25 else "misses"
    print(
        f"RATIO session wall / honest limit (models + one decode): {session.wall_s:.1f} s / "
        f"{honest_s:.1f} s = x{honest:.2f} ({verdict} target <= 1.25, aim 1.1; limits "
        f"{', '.join(f'{lim.honest:.1f}' for lim in limits)} s)"
    )


def _subset(paths: list[str], dest: Path) -> Path:
    """A folder of hard links to these photos: the session indexes a folder."""
    dest.mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(paths):
        link = dest / f"{i:05d}-{Path(p).name}"
        if not link.exists():
            os.link(p, link)
    return dest


def main() -> None:
    """Build the phone-size set, start Prefect, measure the limit, the session, the limit."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--size", choices=photoset.SIZES, default="phone")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument(
        "--folder", type=Path, action="append",
        help="a photo set bench.photoset already built (repeat to pool sets up to --n)",
    )  # fmt: skip
    parser.add_argument(
        "--cold", action="store_true", help="a new session process (as before) instead of the "
        "warm indexer of `photoindex serve`"
    )  # fmt: skip
    args = parser.parse_args()

    prepare_process()
    folders: list[Path] = args.folder or [photoset.build(args.n, args.size, args.cache)]
    bench = workbench("e2e", args.cache, "bench")
    work, weights, api_url = bench.work, bench.weights, bench.api_url
    seed_face_models(args.cache, work / "bench")
    from photoindex.settings import get_settings
    from tasks.models.registry import clip_embedder

    header("end to end: a full session vs the model-only limit")
    for folder in folders:
        print(f"photos: {photoset.describe(folder)}")
    if args.folder:
        print(f"(the first {args.n} of them, in this order)")
    print(f"Prefect: {api_url}; work folder: {work}")
    settings = get_settings()
    tick = time.perf_counter()
    clip_embedder(settings).load()
    print(
        f"CLIP load in this process: {time.perf_counter() - tick:.1f} s (the session process "
        f"pays it too); batch {settings.clip_batch_size}, threads {settings.threads}"
    )
    paths = [p for folder in folders for p in photoset.photo_paths(folder)]
    folder = folders[0]
    if args.folder:
        paths = paths[: args.n]
        folder = _subset(paths, work / "photos")
    limits = [measure_limit(paths, decoders=True)]
    run = run_session if args.cold else run_warm_session
    print(f"session: {'a new session process (cold)' if args.cold else 'on a warm indexer'}")
    session = run(folder, work / "session", weights, args.cache)
    configure(work / "bench", weights)
    limits.append(measure_limit(paths))
    report(session, limits, len(paths))


if __name__ == "__main__":
    main()
