"""Benchmark: CLIP's image tower in float32 and in bfloat16, on this CPU.

`PHOTOINDEX_CLIP_PRECISION=auto` (the default) runs CLIP in bfloat16 where the CPU
computes it natively (AVX512-BF16 or AMX-BF16: `tasks.models.clip.native_bfloat16`).
Both precisions embed the same phone-size photos, preprocessed once, at the batch sizes
the embed phase uses (its ramp 1, 2, 4, 8, then 16), a batch of each in turn; float32 is
the baseline (a photo's share of the median batch time).
The agreement is the cosine of each photo's bfloat16 embedding to its float32 one.

The weights are ViT-B-32's shape with seeded random values (no CLIP weights are
reachable here): the same compute as the released ones.

Run from the repository root: `.venv/bin/python -m bench.bench_clip_precision`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bench import photoset
from bench.common import CLIP_ARCH, DEFAULT_CACHE, clip_weights, header, prepare_process, table

if TYPE_CHECKING:
    import torch

    from tasks.models.clip import ClipEmbedder, Precision

PRECISIONS: tuple[Precision, ...] = ("float32", "bfloat16")
BATCHES = (1, 2, 4, 8, 16)


def batch_s(model: ClipEmbedder, pixels: torch.Tensor, batch: int, r: int) -> float:
    """One batch's time: the `r`th of `batch` photos from the set."""
    chunk = pixels[(r * batch) % len(pixels) :][:batch]
    if len(chunk) < batch:
        chunk = pixels[:batch]
    start = time.perf_counter()
    model.embed_tensors(chunk)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed batches per size and way")
    parser.add_argument("--n", type=int, default=32, help="phone-size photos to embed")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args()
    prepare_process()
    from PIL import Image

    from tasks.models.clip import ClipEmbedder, native_bfloat16

    weights = clip_weights(args.cache)
    photos = photoset.build(args.n, "phone", args.cache, seed=5)
    header(f"CLIP {CLIP_ARCH} image tower: float32 against bfloat16, {args.threads} threads")
    print(f"photos: {photoset.describe(photos)}")
    print(f"this CPU computes bfloat16 natively: {native_bfloat16()}")
    models = {
        p: ClipEmbedder(model_name=CLIP_ARCH, pretrained=weights, threads=args.threads, precision=p)
        for p in PRECISIONS
    }
    import torch

    first = models["float32"]
    pixels = torch.stack([first.preprocess(Image.open(f).convert("RGB"))
                          for f in photoset.photo_paths(photos)])  # fmt: skip
    times: dict[Precision, dict[int, float]] = {p: {} for p in PRECISIONS}
    for batch in BATCHES:
        taken: dict[Precision, list[float]] = {p: [] for p in PRECISIONS}
        for p in PRECISIONS:
            models[p].embed_tensors(pixels[:batch])  # oneDNN prepares its kernels for it
        for r in range(args.rounds):  # the two alternated, so drift weighs on both alike
            for p in PRECISIONS:
                taken[p].append(batch_s(models[p], pixels, batch, r))
        for p in PRECISIONS:
            times[p][batch] = 1000.0 * statistics.median(taken[p]) / batch
    rows = [
        [f"batch {b}", *(f"{times[p][b]:.1f}" for p in PRECISIONS),
         f"x{times['bfloat16'][b] / times['float32'][b]:.2f}"]
        for b in BATCHES
    ]  # fmt: skip
    print(table(["ms a photo", *PRECISIONS, "bfloat16 vs float32"], rows))
    exact = models["float32"].embed_tensors(pixels)
    reduced = models["bfloat16"].embed_tensors(pixels)
    cosine = np.sum(exact * reduced, axis=1)
    print(f"agreement over {len(pixels)} photos: cosine min {cosine.min():.6f}, "
          f"median {np.median(cosine):.6f}")  # fmt: skip


if __name__ == "__main__":
    main()
