"""Benchmark: peak memory of a 5,000-photo session, against a 500-photo session.

Both sessions run the way `photoindex index` runs them (`create_session`, then
`start_session_process`, on a real `prefect server`), each with a fresh data folder, on
small photos (640-1024 px) made from the real set with recorded edits so every file's
content differs (the indexer dedupes by content). The RSS of the session's process tree
is sampled every 0.2 s from /proc. Memory should not grow with the number of photos, so
the figure is the peak of the big session over the peak of the small one.

Run from the repository root: `.venv/bin/python -m bench.bench_memory`
(`--n 240` for a smoke run; the small session has n/10 photos).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import time
from dataclasses import dataclass
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
    workbench,
)

TARGET_BYTES = 3 * 2**30


@dataclass
class Session:
    """One session: its wall time, RSS samples and Prefect timeline."""

    n: int
    wall_s: float
    peak: int
    samples: list[tuple[float, int]]
    runs: list[RunTimes]
    returncode: int
    results_bytes: int

    def peak_in(self, start: float | None, end: float | None) -> int:
        if start is None or end is None:
            return 0
        return max((rss for at, rss in self.samples if start <= at <= end), default=0)


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def run_session(folder: Path, n: int, data_dir: Path, weights: Path, cache: Path) -> Session:
    """Run one session in its own process and sample its process tree's RSS."""
    from photoindex.launch import create_session, start_session_process

    configure(data_dir, weights)
    seed_face_models(cache, data_dir)
    os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = str(data_dir / "results")
    tick = time.perf_counter()
    session_id = asyncio.run(create_session(folder.resolve(), faces=True))
    proc = start_session_process(session_id)
    with RssSampler(proc.pid, period_s=0.2) as rss:
        code = proc.wait()
    wall = time.perf_counter() - tick
    return Session(
        n, wall, rss.peak, rss.samples, session_runs(session_id), code, _du(data_dir / "results")
    )


def report(sessions: list[Session]) -> None:
    """Peak per session and per phase, and the ratio big / small."""
    flows = ["embed-images", "detect-faces", "cluster-faces"]
    rows: list[list[object]] = []
    for s in sessions:
        parent = s.runs[0]
        phase = {r.flow: r for r in s.runs[1:]}
        rows.append(
            [f"{s.n} photos", s.wall_s, s.n / s.wall_s, mb(s.peak),
             *(mb(s.peak_in(phase[f].start, phase[f].end)) if f in phase else "-" for f in flows),
             parent.state.lower(), mb(s.results_bytes)]
        )  # fmt: skip
    print(
        table(
            ["session", "wall s", "photos/s", "peak RSS", *(f"peak in {f}" for f in flows),
             "state", "results on disk"],
            rows,
        )  # fmt: skip
    )
    small, big = sessions
    ratio = big.peak / max(small.peak, 1)
    print(
        f"\nRATIO peak RSS {big.n} / {small.n} photos: {mb(big.peak)} / {mb(small.peak)} = "
        f"x{ratio:.2f} ({big.n / small.n:.0f}x the photos)"
    )
    print(
        f"target: peak of the {big.n}-photo session {mb(big.peak)} "
        f"{'meets' if big.peak < TARGET_BYTES else 'misses'} < 3 GB"
    )


def main() -> None:
    """Build the sets, start Prefect, run the small session and then the big one."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--small", type=int, default=0, help="default: n / 10")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--keep", action="store_true", help="keep the sessions' data folders")
    args = parser.parse_args()
    small_n = args.small or max(1, args.n // 10)

    prepare_process()
    big_set = photoset.build(args.n, "small", args.cache)
    small_set = photoset.build(small_n, "small", args.cache)
    bench = workbench("memory", args.cache, "bench")
    work, weights, api_url = bench.work, bench.weights, bench.api_url

    header("memory: peak RSS of a session's process tree, big vs small")
    print(f"small: {photoset.describe(small_set)}")
    print(f"big:   {photoset.describe(big_set)}")
    print(f"Prefect: {api_url}; work folder: {work}; RSS sampled every 0.2 s")
    sessions = []
    for n, folder, name in ((small_n, small_set, "small"), (args.n, big_set, "big")):
        session = run_session(folder, n, work / name, weights, args.cache)
        print(f"{name} session: {session.wall_s:.0f} s, peak {mb(session.peak)}", flush=True)
        sessions.append(session)
        if not args.keep:
            shutil.rmtree(work / name, ignore_errors=True)
    report(sessions)


if __name__ == "__main__":
    main()
