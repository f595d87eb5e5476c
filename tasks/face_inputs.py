"""What the embed phase leaves the faces phase: each photo's found faces, by content hash.

A session decodes each photo once. The embed phase decodes it at the faces' scale, runs
the face detector and aligner on that decode, and stores the result here: boxes,
landmarks and the aligned crops at today's resolution (tens of KB a photo, never the photo
itself). The faces phase reads an entry instead of decoding the photo again, and deletes
it once the photo's faces are written. A missing entry only means the faces phase decodes
the photo itself, so an entry lost or never made (an old library, a killed run, a faces
phase run on its own) costs time, never a result.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from photoindex.settings import Settings

if TYPE_CHECKING:
    from tasks.decode import Decoded, SkipImage
    from tasks.models.faces import FaceAnalyzer, FoundFace

#: The long side the faces phase needs, in pixels: big enough for small faces in group
#: photos, far cheaper than 12 MP (a phone photo decodes at its 1/2 DCT scale, 2016 px).
FACE_SIDE = 1600
#: Take JPEG's nearest decode scale rather than resample, up to this factor over the side.
FACE_SLACK = 1.5

# What a damaged or half-written entry raises when read; it then counts as missing.
_READ_ERRORS = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)


@dataclass
class FaceInput:
    """One photo's found faces in decoded pixels, or why the photo cannot be used."""

    scale: float = 1.0  # original pixels per decoded pixel
    faces: list[FoundFace] = field(default_factory=list)
    reason: str | None = None


def find_faces(decoded: Decoded | SkipImage, analyzer: FaceAnalyzer) -> FaceInput:
    """A photo decoded at the faces' scale, through the detector and aligner; or its reason."""
    if isinstance(decoded, Exception):
        return FaceInput(reason=decoded.reason)
    bgr = decoded.bgr()
    return FaceInput(decoded.width / max(1, bgr.shape[1]), analyzer.find(bgr))


def inputs_root(settings: Settings) -> Path:
    """The folder of every face-input cache in a data folder."""
    return settings.data_dir / "cache" / "face-inputs"


def fingerprint(
    analyzer: FaceAnalyzer, max_side: int = FACE_SIDE, slack: float = FACE_SLACK
) -> str:
    """What found faces depend on: the models, the detector's settings and the decode size."""
    recipe = (
        f"{analyzer.model_id}:{analyzer.det_size}:{analyzer.det_threshold}:"
        f"{analyzer.min_face_size}:{max_side}:{slack}"
    )
    return hashlib.sha256(recipe.encode()).hexdigest()[:12]


class FaceInputs:
    """Found faces by content hash, one small `.npz` file a photo, written atomically."""

    def __init__(self, settings: Settings, key: str) -> None:
        self.root = inputs_root(settings) / key

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / f"{sha256}.npz"

    def put(self, sha256: str, entry: FaceInput) -> None:
        """Store one photo's entry; a crash never leaves half a file under its name."""
        dest = self.path(sha256)
        dest.parent.mkdir(parents=True, exist_ok=True)
        faces = entry.faces
        arrays = {
            "scale": np.float64(entry.scale),
            "reason": np.str_(entry.reason or ""),
            "boxes": np.array([f.bbox for f in faces], dtype=np.float32).reshape(-1, 4),
            "scores": np.array([f.score for f in faces], dtype=np.float32),
            "kps": np.array([f.kps for f in faces], dtype=np.float32).reshape(-1, 5, 2),
            "crops": (
                np.stack([f.crop for f in faces])
                if faces
                else np.zeros((0, 0, 0, 3), dtype=np.uint8)
            ),
        }
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{sha256[:12]}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as stream:
                np.savez(stream, **arrays)  # type: ignore[arg-type]
            os.replace(tmp, dest)
        finally:
            Path(tmp).unlink(missing_ok=True)

    def get(self, sha256: str) -> FaceInput | None:
        """One photo's entry, or None when there is none (or it cannot be read)."""
        from tasks.models.faces import FoundFace

        try:
            with np.load(self.path(sha256), allow_pickle=False) as data:
                scale, reason = float(data["scale"]), str(data["reason"])
                boxes, scores, kps, crops = (
                    data["boxes"], data["scores"], data["kps"], data["crops"]
                )  # fmt: skip
        except _READ_ERRORS:
            return None
        faces = [
            FoundFace(
                bbox=(float(b[0]), float(b[1]), float(b[2]), float(b[3])),
                score=float(s),
                kps=[[float(x), float(y)] for x, y in k],
                crop=np.ascontiguousarray(c),
            )
            for b, s, k, c in zip(boxes, scores, kps, crops, strict=True)
        ]
        return FaceInput(scale, faces, reason or None)

    def drop(self, shas: Iterable[str]) -> None:
        """Delete the entries of photos whose faces are written."""
        for sha in shas:
            self.path(sha).unlink(missing_ok=True)


def clear_inputs(settings: Settings) -> None:
    """Delete every face-input entry of a data folder (after a faces phase completes)."""
    shutil.rmtree(inputs_root(settings), ignore_errors=True)
