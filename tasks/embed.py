"""The embed phase: CLIP image embeddings into the vector store.

In a session that also finds faces, this phase decodes each photo once for both: at the
faces' scale, where it runs the face detector and aligner and leaves the found faces for
the faces phase (`tasks.face_inputs`), and, shrunk from that same decode, at CLIP's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from photoindex.settings import Settings
from tasks.catalog import display_path, now_utc
from tasks.decode import capture_time, read_capture_time
from tasks.discover import ImageRef
from tasks.face_inputs import FACE_SIDE, FACE_SLACK, FaceInputs, find_faces, fingerprint
from tasks.faces import FacesPhase
from tasks.images import ImagePhase
from tasks.models.registry import clip_embedder, face_analyzer
from tasks.phase import BatchOutcome, Rejection
from tasks.vectors import TAKEN_AT, VectorStore, point_id

if TYPE_CHECKING:
    from tasks.models.faces import FaceAnalyzer


@dataclass
class Prepared:
    """A decoded batch: model-ready tensors for the good photos, reasons for the bad."""

    refs: list[ImageRef]
    sizes: list[tuple[int, int]]
    pixels: torch.Tensor | None
    skipped: list[tuple[ImageRef, str]]
    taken: list[datetime | None] = field(default_factory=list)
    looked: int = 0  # photos looked in for the faces phase (those it will do; undecodable too)
    found: int = 0  # the faces found in them


@dataclass
class Embedded:
    """A computed batch, without the pixels: small enough to persist as a batch result."""

    refs: list[ImageRef]
    sizes: list[tuple[int, int]]
    skipped: list[tuple[ImageRef, str]]
    vectors: np.ndarray
    taken: list[datetime | None] = field(default_factory=list)
    looked: int = 0
    found: int = 0


#: How long the embed phase waits for a local vector store that another process holds.
STORE_WAIT_S = 120.0


class EmbedPhase(ImagePhase[Prepared, Embedded]):
    """Embed every photo with CLIP; vectors go to Qdrant."""

    name = "embed"
    clip_side = 448  # enough for CLIP's 224 px centre crop after resize
    max_side = clip_side

    def __init__(self, folder: Path, settings: Settings | None = None, faces: bool = False) -> None:
        super().__init__(folder, settings)
        self.batch_size = self.settings.clip_batch_size
        self.model = clip_embedder(self.settings)
        self.faces = faces
        self.finder: FaceAnalyzer | None = None
        self.face_inputs: FaceInputs | None = None
        # The photos the faces phase will need; None (a worker that did not discover): all.
        self.faces_todo: set[str] | None = None
        if faces:
            # One decode serves both phases: at the faces' scale, in the detector's order.
            self.max_side, self.side_slack, self.channel_order = FACE_SIDE, FACE_SLACK, "BGR"
            self.finder = face_analyzer(self.settings, threads=1)
            self.face_inputs = FaceInputs(self.settings, fingerprint(self.finder))

    def init_args(self) -> tuple[Any, ...]:
        return (self.folder, self.settings, self.faces)

    @property
    def model_id(self) -> str:
        return self.model.model_id

    def prepare(self) -> None:
        self.model.load()
        if self.finder is not None:
            self.finder.load()

    def discover(self) -> tuple[Sequence[ImageRef], Sequence[Rejection]]:
        items, rejected = super().discover()
        self.date_undated(items)
        if self.finder is not None:
            done = self.catalog.done_rows(FacesPhase.name, self.finder.model_id)
            self.faces_todo = {ref.sha256 for ref in items if ref.sha256 not in done}
        return items, rejected

    def read(self, batch: Sequence[ImageRef]) -> Prepared:
        self.model.load()
        refs: list[ImageRef] = []
        sizes: list[tuple[int, int]] = []
        tensors: list[torch.Tensor] = []
        skipped: list[tuple[ImageRef, str]] = []
        taken: list[datetime | None] = []
        looked = found = 0
        for ref in batch:
            decoded = self.decode_one(ref)
            if self._for_faces(ref):
                assert self.finder is not None and self.face_inputs is not None
                faces = find_faces(decoded, self.finder)
                self.face_inputs.put(ref.sha256, faces)
                looked, found = looked + 1, found + len(faces.faces)
            if isinstance(decoded, Exception):
                skipped.append((ref, decoded.reason))
                continue
            refs.append(ref)
            sizes.append((decoded.width, decoded.height))
            taken.append(decoded.taken)
            clip_image = decoded.reduced(self.clip_side, ImagePhase.side_slack).image
            tensors.append(self.model.preprocess(clip_image))
        pixels = torch.stack(tensors) if tensors else None
        return Prepared(refs, sizes, pixels, skipped, taken, looked, found)

    def _for_faces(self, ref: ImageRef) -> bool:
        """Whether to leave this photo's found faces for the faces phase of this session."""
        if self.face_inputs is None:
            return False
        return self.faces_todo is None or ref.sha256 in self.faces_todo

    def compute(self, batch: Prepared) -> Embedded:
        vectors = (
            np.zeros((0, 0), dtype=np.float32)
            if batch.pixels is None
            else self.model.embed_tensors(batch.pixels)
        )
        return Embedded(
            batch.refs, batch.sizes, batch.skipped, vectors, batch.taken, batch.looked, batch.found
        )

    def findings(self, computed: Embedded) -> tuple[int, int]:
        """The photos it looked in for the faces phase (the ones that phase will do), and the
        faces found in them."""
        return computed.looked, computed.found

    def store(self) -> VectorStore:
        # A local-mode store may be held briefly by the API's search: wait for it.
        return VectorStore(self.model_id, self.settings, wait_s=STORE_WAIT_S)

    def forget(self, keys: Sequence[str]) -> None:
        self.store().delete(keys)

    def repath(self, paths: Mapping[str, str]) -> None:
        self.store().set_paths(dict(paths))

    def date_undated(self, items: Sequence[ImageRef]) -> int:
        """Give points stored before capture times were kept (e.g. a migrated store) their
        capture time, read from the files' EXIF headers: nothing decoded or re-embedded."""
        store = self.store()
        undated = store.without(TAKEN_AT)
        if not undated:
            return 0
        by_id = {point_id(ref.sha256): ref for ref in items}
        fields = {
            ref.sha256: capture_time(read_capture_time(ref.path), ref.mtime)
            for pid in undated
            if (ref := by_id.get(pid)) is not None
        }
        store.set_payloads(fields)
        return len(fields)

    def write(self, result: Embedded) -> BatchOutcome:
        prepared = result
        rows = self.skipped_rows(prepared.skipped)
        if prepared.refs:
            indexed_at = now_utc().isoformat()
            payloads = [
                {
                    "path": display_path(ref.path),
                    "sha256": ref.sha256,
                    "width": w,
                    "height": h,
                    "indexed_at": indexed_at,
                    **capture_time(taken, ref.mtime),
                }
                for ref, (w, h), taken in zip(
                    prepared.refs, prepared.sizes, prepared.taken, strict=True
                )
            ]
            self.store().upsert(result.vectors, payloads)
            rows += [
                self.row(ref, "indexed", width=w, height=h)
                for ref, (w, h) in zip(prepared.refs, prepared.sizes, strict=True)
            ]
        return BatchOutcome(rows)
