"""Work items for the phases that go over photos: discovery and decoding."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Generic, TypeVar

from photoindex.settings import Settings
from tasks.decode import Decoded, SkipImage, decode_image
from tasks.discover import ImageRef, discover_images
from tasks.phase import Phase, Rejection

Computed = TypeVar("Computed")
Loaded = TypeVar("Loaded")


class ImagePhase(Phase[ImageRef, Loaded, Computed], Generic[Loaded, Computed]):
    """A phase whose items are the photos under a folder, keyed by content hash."""

    max_side: int | None = None

    def __init__(self, folder: Path, settings: Settings | None = None) -> None:
        super().__init__(settings)
        self.folder = folder

    def discover(self) -> tuple[Sequence[ImageRef], Sequence[Rejection]]:
        images, rejected = discover_images(self.folder)
        # The same photo stored twice is one item: content decides, not the path.
        unique: dict[str, ImageRef] = {}
        for ref in images:
            unique.setdefault(ref.sha256, ref)
        return list(unique.values()), [
            Rejection(key="path:" + r.path, path=r.path, reason=r.reason) for r in rejected
        ]

    def key(self, item: ImageRef) -> str:
        return item.sha256

    def decode(self, batch: Sequence[ImageRef]) -> list[tuple[ImageRef, Decoded | SkipImage]]:
        """Decode each photo once at this phase's size; a bad one becomes its reason."""
        out: list[tuple[ImageRef, Decoded | SkipImage]] = []
        for ref in batch:
            try:
                out.append((ref, decode_image(ref.path, self.max_side)))
            except SkipImage as skip:
                out.append((ref, skip))
        return out
