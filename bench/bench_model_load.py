"""Benchmark: loading CLIP in a new process, with and without torch's random initialisers.

Every cold session process and every warm indexer's start loads CLIP once: open_clip
builds the model (torch draws random values for every parameter), then the checkpoint
overwrites them all. `tasks.models.clip` builds it with the initialisers off. Each load
runs in a fresh process (as a cold session's does), the two ways alternated; the load
with the initialisers on is the baseline.

Run from the repository root: `.venv/bin/python -m bench.bench_model_load`.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

from bench.common import CLIP_ARCH, DEFAULT_CACHE, clip_weights, header, prepare_process, table

#: One load, timed inside the child: `ClipEmbedder.load` (build, checkpoint, a probe pass).
CHILD = """
import contextlib, sys, time
import tasks.models.clip as clip
if sys.argv[1] == "with random init":
    clip._weights_to_come = contextlib.nullcontext
model = clip.ClipEmbedder(model_name=sys.argv[2], pretrained=sys.argv[3], config=None, threads=2)
start = time.perf_counter()
model.load()
print(time.perf_counter() - start)
"""
WAYS = ("with random init", "without (photoindex)")


def load_s(way: str, weights: Path) -> float:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, way, CLIP_ARCH, str(weights)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="loads of each way, alternated")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args()
    prepare_process()
    weights = clip_weights(args.cache)
    header(f"CLIP {CLIP_ARCH} load in a new process")
    times: dict[str, list[float]] = {way: [] for way in WAYS}
    for _ in range(args.rounds):
        for way in WAYS:
            times[way].append(load_s(way, weights))
    base = statistics.median(times[WAYS[0]])
    print(table(
        ["way", "median s", "min s", "max s", "vs baseline"],
        [[way, statistics.median(t), min(t), max(t), f"x{statistics.median(t) / base:.2f}"]
         for way, t in times.items()],
    ))  # fmt: skip


if __name__ == "__main__":
    main()
