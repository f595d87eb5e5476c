"""The faces phase: detect, align and embed faces; crops to JPEG, rows to Parquet."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from photoindex.settings import Settings
from tasks.catalog import display_path, now_utc
from tasks.discover import ImageRef
from tasks.face_inputs import FACE_SIDE, FACE_SLACK, FaceInputs, find_faces, fingerprint
from tasks.images import ImagePhase
from tasks.models.faces import Face, FoundFace
from tasks.models.registry import face_analyzer
from tasks.phase import BatchOutcome


def face_id(sha256: str, model: str, index: int) -> str:
    """A face's id: the same photo, model and detection order give the same id."""
    return hashlib.sha256(f"{sha256}:{model}:{index}".encode()).hexdigest()[:20]


@dataclass
class Loaded:
    """Found faces (aligned crops, no photo pixels) for the good photos, reasons for the bad."""

    photos: list[tuple[ImageRef, float, list[FoundFace]]]  # scale to original size
    skipped: list[tuple[ImageRef, str]]
    decoded: int = 0  # photos this phase had to decode (the embed phase left no faces)


@dataclass
class Found:
    """A computed batch without the pixels: small enough to persist as a batch result."""

    photos: list[tuple[ImageRef, float]]  # scale to original size
    skipped: list[tuple[ImageRef, str]]
    faces: list[list[Face]]


class FacesPhase(ImagePhase[Loaded, Found]):
    """Find and embed the faces in every photo."""

    name = "faces"
    max_side = FACE_SIDE
    side_slack = FACE_SLACK
    channel_order = "BGR"
    # The recognisers take one face at a time: batches run in parallel, one thread each.
    serial_compute = False
    # Full batches from the start: with the embed phase's faces to take, an item is one
    # encoder pass a face (ramped, a +20 session ran five task runs where two do: measured
    # 2.94 against 3.03 s a warm session, and less of the Prefect server's CPU). Decoding
    # photos itself (no embed phase before it), its first results wait for one batch.
    ramped = False

    def __init__(self, folder: Path, settings: Settings | None = None) -> None:
        super().__init__(folder, settings)
        self.batch_size = self.settings.face_batch_size
        self.analyzer = face_analyzer(self.settings, threads=1)
        self.inputs = FaceInputs(self.settings, fingerprint(self.analyzer))

    @property
    def model_id(self) -> str:
        return self.analyzer.model_id

    def prepare(self) -> None:
        self.analyzer.load()

    def read(self, batch: Sequence[ImageRef]) -> Loaded:
        """The faces the embed phase found in each photo; photos it left none for, decoded."""
        loaded = Loaded([], [])
        for ref in batch:
            entry = self.inputs.get(ref.sha256)
            if entry is None:
                entry = find_faces(self.decode_one(ref), self.analyzer)
                loaded.decoded += 1
            if entry.reason is not None:
                loaded.skipped.append((ref, entry.reason))
            else:
                loaded.photos.append((ref, entry.scale, entry.faces))
        return loaded

    def compute(self, batch: Loaded) -> Found:
        return Found(
            [(ref, scale) for ref, scale, _ in batch.photos],
            batch.skipped,
            [self.analyzer.encode(found) for _, _, found in batch.photos],
        )

    def write(self, result: Found) -> BatchOutcome:
        rows = self.skipped_rows(result.skipped)
        face_rows: list[dict[str, Any]] = []
        indexed_at = now_utc()
        for (ref, scale), faces in zip(result.photos, result.faces, strict=True):
            for index, face in enumerate(faces):
                fid = face_id(ref.sha256, self.model_id, index)
                crop = self.settings.crops_dir / fid[:2] / f"{fid}.jpg"
                save_jpeg(face.crop[:, :, ::-1], crop)
                face_rows.append(
                    {
                        "face_id": fid,
                        "image_sha256": ref.sha256,
                        "image_path": display_path(ref.path),
                        "bbox": [float(v) * scale for v in face.bbox],
                        "score": float(face.score),
                        "landmarks": [float(v) * scale for xy in face.kps for v in xy],
                        "embedding": face.embedding.astype(np.float32).tolist(),
                        "model": self.model_id,
                        "crop_path": str(crop.resolve()),
                        "indexed_at": indexed_at,
                    }
                )
            rows.append(self.row(ref, "indexed", n_faces=len(faces)))
        # Face rows land before the status rows that mark their photos done.
        self.catalog.append("faces", face_rows, name="faces")
        # What the embed phase left for these photos is used up (a re-run decodes again).
        self.inputs.drop([ref.sha256 for ref, _ in result.photos])
        self.inputs.drop([ref.sha256 for ref, _ in result.skipped])
        return BatchOutcome(rows)

    def repath(self, paths: Mapping[str, str]) -> None:
        """Point the faces of moved photos at their new paths: same faces, newer rows."""
        rows = self.catalog.query(
            "SELECT * FROM faces WHERE model = ? AND list_contains(?, image_sha256)",
            (self.model_id, list(paths)),
        )
        moved_at = now_utc()
        self.catalog.append(
            "faces",
            [{**r, "image_path": paths[r["image_sha256"]], "indexed_at": moved_at} for r in rows],
            name="moved",
        )

    def forget(self, keys: Sequence[str]) -> None:
        """Tombstone the faces of photos gone from the library and delete their crops."""
        gone = self.catalog.query(
            "SELECT face_id, crop_path FROM faces WHERE list_contains(?, image_sha256)",
            (list(keys),),
        )
        for row in gone:
            Path(row["crop_path"]).unlink(missing_ok=True)
        removed_at = now_utc()
        self.catalog.append(
            "faces",
            [
                {"face_id": r["face_id"], "model": self.model_id, "indexed_at": removed_at,
                 "removed": True}
                for r in gone
            ],
            name="removed",
        )  # fmt: skip


def save_jpeg(rgb: np.ndarray, dest: Path) -> None:
    """Save a crop as JPEG, atomically, so a crash never leaves half a file."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".jpg.tmp")
    Image.fromarray(np.ascontiguousarray(rgb)).save(tmp, format="JPEG", quality=92)
    tmp.replace(dest)
