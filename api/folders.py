"""The folders the API may index (under the configured library roots), and starting a
session on one."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol
from uuid import UUID

import anyio

from photoindex.settings import Settings


class FolderForbidden(Exception):
    """The folder lies outside every configured library root."""


class FolderNotFound(Exception):
    """The folder does not exist or is not a directory."""


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
    """Start a session through `photoindex.launch`, off the event loop; raises
    `tasks.lock.LibraryBusy` when a session is indexing into the data folder now."""
    from photoindex.launch import submit_session

    launched = await anyio.to_thread.run_sync(submit_session, folder, faces)
    return launched.session_id
