"""One indexing session at a time per data folder: a lock the operating system releases.

Sessions write to one catalog and one vector store, so two at once would interleave
their writes. `fcntl.flock` is tied to the open file: a killed process (even SIGKILL)
releases it, so a crash never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from photoindex.settings import Settings

PROBE_GRACE_S = 2.0


class LibraryBusy(RuntimeError):
    """Another indexing session holds the data folder."""


def _lock_file(settings: Settings) -> Path:
    settings.locks_dir.mkdir(parents=True, exist_ok=True)
    return settings.locks_dir / "index.lock"


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "another session"
    session = info.get("session") or "?"
    return f"session {session} (pid {info.get('pid', '?')}, folder {info.get('folder', '?')})"


def busy_message(holder: str, settings: Settings) -> str:
    return (
        f"{holder} is already indexing into {settings.data_dir}; one session at a time "
        "writes there. Wait for it to finish (or cancel it), then start again: finished "
        "photos are kept."
    )


@contextmanager
def library_lock(settings: Settings, session: str, folder: str) -> Iterator[None]:
    """Hold the data folder's indexing lock, or raise LibraryBusy at once."""
    path = _lock_file(settings)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        # A moment's grace: `library_holder` probes the lock briefly from other processes.
        deadline = time.monotonic() + PROBE_GRACE_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LibraryBusy(busy_message(_holder(path), settings)) from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.write(
            fd, json.dumps({"session": session, "pid": os.getpid(), "folder": folder}).encode()
        )
        yield
    finally:
        os.close(fd)  # closing releases the lock


def library_holder(settings: Settings) -> str | None:
    """Who holds the lock now, or None when no session is indexing."""
    path = _lock_file(settings)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder(path)
        return None
    finally:
        os.close(fd)
