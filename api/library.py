"""The API's access to the photo library: folders under the roots, search, persons, crops.

Models, vectors and the catalog are imported lazily, so the progress endpoints never
load them. Each blocking call runs in a worker thread.
"""

from __future__ import annotations

import inspect
import threading
from pathlib import Path
from typing import Any, Protocol
from uuid import UUID

import anyio

from api.schemas import Person, SearchHit
from photoindex.settings import Settings

_LOCAL_STORE = threading.Lock()


class LibraryUnavailable(Exception):
    """Search or the catalog cannot serve now (no model weights, store busy, flows missing)."""


class FolderForbidden(Exception):
    """The folder lies outside every configured library root."""


class FolderNotFound(Exception):
    """The folder does not exist or is not a directory."""


class LibraryBusy(Exception):
    """Another session is indexing into the data folder now."""


def library_folder(folder: str, settings: Settings) -> Path:
    """The resolved folder, if it lies under a configured library root and exists."""
    roots = [root.expanduser().resolve() for root in settings.library_roots]
    if not roots:
        raise FolderForbidden(
            "No library roots are configured: set PHOTOINDEX_LIBRARY_ROOTS to the folders "
            "the API may index."
        )
    try:
        path = Path(folder).expanduser()
    except RuntimeError:  # "~someone" with no such user
        path = Path(folder)
    if not path.is_absolute():
        raise FolderForbidden(f"Folder must be an absolute path under a library root: {folder}")
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError) as err:  # a symlink loop, a name too long
        raise FolderNotFound(f"Folder not found: {folder} ({err})") from err
    if not any(resolved == root or resolved.is_relative_to(root) for root in roots):
        raise FolderForbidden(f"Folder is outside the configured library roots: {folder}")
    try:
        exists, is_dir = resolved.exists(), resolved.is_dir()
    except OSError as err:  # e.g. a name longer than the file system allows
        raise FolderNotFound(f"Folder not found: {folder} ({err.strerror})") from err
    if not exists:
        raise FolderNotFound(f"Folder not found: {folder}")
    if not is_dir:
        raise FolderNotFound(f"Not a folder: {folder}")
    return resolved


class SessionLauncher(Protocol):
    """Starts an indexing session and returns its id at once."""

    async def __call__(self, folder: Path, faces: bool) -> UUID: ...


async def launch_session(folder: Path, faces: bool) -> UUID:
    """Start a session through the flows' `submit_session`, off the event loop."""
    try:
        from flows.index_photos import submit_session
        from tasks.lock import LibraryBusy as IndexRunning
    except ImportError as err:
        raise LibraryUnavailable(f"The indexing flows cannot be loaded: {err}") from err
    try:
        if inspect.iscoroutinefunction(submit_session):
            result: UUID = await submit_session(folder, faces)
            return result
        return await anyio.to_thread.run_sync(submit_session, folder, faces)
    except IndexRunning as err:
        raise LibraryBusy(str(err)) from err


class TextSearch:
    """Text-to-photo search with the configured CLIP model and vector store."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def search(self, query: str, k: int) -> list[SearchHit]:
        """The k photos that best match the query."""
        return await anyio.to_thread.run_sync(self._locked_search, query, k)

    def _locked_search(self, query: str, k: int) -> list[SearchHit]:
        if self.settings.qdrant_url:
            return self._search(query, k)
        with _LOCAL_STORE:  # one local-mode client at a time, closed after each search
            return self._search(query, k)

    def _search(self, query: str, k: int) -> list[SearchHit]:
        from tasks.embed import clip_embedder
        from tasks.models.clip import ClipModelError
        from tasks.vectors import VectorStore, VectorStoreBusy, close_clients

        model = clip_embedder(self.settings)
        try:
            vector = model.embed_text([query])[0]
            hits = VectorStore(model.model_id, self.settings).search(vector, k)
        except (ClipModelError, VectorStoreBusy) as err:
            raise LibraryUnavailable(str(err)) from err
        finally:
            if not self.settings.qdrant_url:
                # Local Qdrant locks its folder: release it so an indexing run can write.
                close_clients()
        return [SearchHit(path=path, score=score, payload=_scalars(p)) for path, score, p in hits]


def _scalars(payload: dict[str, Any]) -> dict[str, str | int | float | bool | None]:
    return {
        k: v for k, v in payload.items() if v is None or isinstance(v, str | int | float | bool)
    }


class PersonDirectory:
    """Persons and face crops from the catalog."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def persons(self, limit: int, samples: int) -> list[Person]:
        """Persons, largest first."""
        rows = await anyio.to_thread.run_sync(self._persons, limit, samples)
        return [
            Person(
                person_id=str(row["person_id"]),
                face_count=int(row["face_count"]),
                representative_face_id=_opt_str(row.get("representative_face_id")),
                representative_crop_url=(
                    f"/api/v1/faces/{row['representative_face_id']}/crop"
                    if row.get("representative_face_id")
                    else None
                ),
                sample_crops=[str(c) for c in row.get("sample_crops") or []],
            )
            for row in rows
        ]

    def _persons(self, limit: int, samples: int) -> list[dict[str, Any]]:
        from tasks.catalog import Catalog

        return Catalog(self.settings).persons(limit=limit, samples=samples)

    async def crop(self, face_id: str) -> Path | None:
        """The crop file of a face, only if it lies inside the data folder's crops."""
        return await anyio.to_thread.run_sync(self._checked_crop, face_id)

    def _checked_crop(self, face_id: str) -> Path | None:
        path = self._crop(face_id)
        if path is None:
            return None
        try:
            # resolve() follows symlinks, so a link out of the crops folder is refused too.
            resolved = path.resolve()
            crops = self.settings.crops_dir.resolve()
            if not resolved.is_relative_to(crops) or not resolved.is_file():
                return None
        except (OSError, ValueError, RuntimeError):  # NUL in a path, symlink loops
            return None
        return resolved

    def _crop(self, face_id: str) -> Path | None:
        from tasks.catalog import Catalog

        return Catalog(self.settings).face_crop_path(face_id)


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)
