"""Work items for the phases that go over photos: discovery and decoding."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

from photoindex.settings import Settings
from tasks import readahead
from tasks.catalog import display_path, now_utc
from tasks.decode import Decoded, Order, SkipImage, decode_image
from tasks.discover import ImageRef, by_content, discover_images
from tasks.phase import Phase, Rejection

Computed = TypeVar("Computed")
Loaded = TypeVar("Loaded")


class ImagePhase(Phase[ImageRef, Loaded, Computed], Generic[Loaded, Computed]):
    """A phase whose items are the photos under a folder, keyed by content hash.

    Discovery scans the folder and replaces its manifest in the catalog: unchanged
    files keep their hash (no re-read), so only new or modified files are hashed.
    Photos whose content is in no folder's manifest any more are stale: the phase
    forgets what it stored for them. A photo found under a new path is moved, not new.
    """

    max_side: int | None = None
    side_slack = 1.5  # take JPEG's nearest decode scale rather than resample (see decode_image)
    channel_order: Order = "RGB"  # what the phase's model takes: simplejpeg decodes straight to it

    def __init__(self, folder: Path, settings: Settings | None = None) -> None:
        super().__init__(settings)
        self.folder = folder

    def init_args(self) -> tuple[Any, ...]:
        return (self.folder, self.settings)

    def discover(self) -> tuple[Sequence[ImageRef], Sequence[Rejection]]:
        # A file unchanged since it was last hashed (same size and mtime) keeps its hash: the
        # catalog's, or the one a warm indexer's read-ahead took moments ago.
        known = self.catalog.known_files() | readahead.hashed()
        images, rejected = discover_images(self.folder, known=known)
        self.catalog.write_manifest(
            str(self.folder), [(r.path, r.sha256, r.size, r.mtime) for r in images]
        )
        return by_content(images), [
            Rejection(key="path:" + r.path, path=r.path, reason=r.reason) for r in rejected
        ]

    def key(self, item: ImageRef) -> str:
        return item.sha256

    def path(self, item: ImageRef) -> str:
        return item.path

    def stale(self, done: Mapping[str, Mapping[str, Any]]) -> list[str]:
        present = self.catalog.present_shas()
        return sorted(k for k in done if not k.startswith("path:") and k not in present)

    def moved(
        self, items: Sequence[ImageRef], done: Mapping[str, Mapping[str, Any]]
    ) -> list[dict[str, Any]]:
        paths = {
            ref.sha256: display_path(ref.path)
            for ref in items
            if ref.sha256 in done and done[ref.sha256]["path"] != display_path(ref.path)
        }
        if paths:
            self.repath(paths)
        return [{**done[sha], "path": path, "updated_at": now_utc()} for sha, path in paths.items()]

    def repath(self, paths: Mapping[str, str]) -> None:
        """Point what this phase stored for these photos (by content hash) at their new paths."""

    def row(self, ref: ImageRef, status: str, **extra: Any) -> dict[str, Any]:
        """A status row for one photo."""
        return self.status(ref.sha256, ref.path, status, sha256=ref.sha256, **extra)

    def skipped_rows(self, skipped: Sequence[tuple[ImageRef, str]]) -> list[dict[str, Any]]:
        """The status rows of photos that could not be used, with their reasons."""
        return [self.row(ref, "skipped", reason=reason) for ref, reason in skipped]

    def decode(self, batch: Sequence[ImageRef]) -> list[tuple[ImageRef, Decoded | SkipImage]]:
        """Decode each photo once at this phase's size; a bad one becomes its reason."""
        return [(ref, self.decode_one(ref)) for ref in batch]

    def decode_one(self, ref: ImageRef) -> Decoded | SkipImage:
        """One photo at this phase's size and channel order, or why it cannot be used;
        a warm indexer may have decoded it already (`tasks.readahead`)."""
        ahead = readahead.take(ref, readahead.params_of(self))
        return self.decode_fresh(ref) if ahead is None else ahead

    def decode_fresh(self, ref: ImageRef) -> Decoded | SkipImage:
        """`decode_one`, from the file."""
        try:
            return decode_image(
                ref.path,
                self.max_side,
                self.side_slack,
                self.channel_order,
                max_pixels=self.settings.max_image_pixels,
            )
        except SkipImage as skip:
            return skip
