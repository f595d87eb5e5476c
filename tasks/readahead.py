"""Photos decoded ahead of their batch by a warm indexer, while Prefect starts the session.

A warm session spends its first half second in Prefect's bookkeeping: the claim, the
parent flow, the embed subflow, discovery. One core sits idle through it. The read-ahead
uses it: it finds the photos the embed phase will take first (the same scan, the same
order), and decodes them with the phase's own decoder; its scan's hashes serve the
phase's scan too. The phase's `decode_one` takes a photo from here when it is the same
file (path, content hash, size and mtime) decoded with the same parameters; anything
else it decodes itself.

At most `READ_AHEAD_PHOTOS` photos are held (about 9 MB each at the faces' scale), and
all are let go when the session ends. A photo the phase asks for before the read-ahead
got to it is the phase's to decode; one being decoded is waited for.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from tasks.decode import Decoded, SkipImage
from tasks.discover import ImageRef, by_content, discover_images
from tasks.phase import work_order

if TYPE_CHECKING:
    from tasks.images import ImagePhase

logger = logging.getLogger(__name__)

#: The first batches of a ramp (1 + 2 + 4) and one more: about what the idle start decodes.
READ_AHEAD_PHOTOS = 8

Params = tuple[int | None, float, str]
"""What a decode depends on besides the file: the phase's max side, slack and channel order."""

_current: ReadAhead | None = None
"""The read-ahead of the session running in this process (a warm indexer runs one at a
time): set and read whole, so it needs no lock."""


def params_of(phase: ImagePhase[Any, Any]) -> Params:
    return (phase.max_side, phase.side_slack, phase.channel_order)


class ReadAhead:
    """The first photos of one phase's work, decoded in a background thread."""

    def __init__(self, phase: ImagePhase[Any, Any], limit: int = READ_AHEAD_PHOTOS) -> None:
        self.phase = phase
        self.params = params_of(phase)
        self.limit = limit
        self._slots: dict[ImageRef, Future[Decoded | SkipImage]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.finished = threading.Event()
        """Set when `run` has nothing more to do."""
        self.decoded = self.taken = 0
        self.hashed: dict[str, tuple[int, float, str]] = {}
        """What its scan hashed, as `Catalog.known_files` gives it: path to (size, mtime,
        sha256). The phase's own scan, moments later, need not hash these files again."""

    def planned(self) -> list[ImageRef]:
        """The photos the phase will take first: its discovery's photos to do, in its order."""
        phase = self.phase
        refs, _ = discover_images(phase.folder, known=phase.catalog.known_files())
        self.hashed = {ref.path: (ref.size, ref.mtime, ref.sha256) for ref in refs}
        done = phase.catalog.done_rows(phase.name, phase.model_id)
        return work_order(phase, by_content(refs), done)[: self.limit]

    def plan(self) -> list[ImageRef]:
        """Find the photos to read ahead; from now on the phase may ask for them."""
        planned = self.planned()
        with self._lock:
            for ref in planned:
                self._slots[ref] = Future()
        return planned

    def decode_planned(self) -> None:
        """Decode the planned photos in order, each unless the phase asked for it first."""
        with self._lock:
            planned = list(self._slots.items())
        for ref, future in planned:
            if self._stop.is_set():
                return
            if not future.set_running_or_notify_cancel():
                continue  # the phase took it over
            try:
                future.set_result(self.phase.decode_fresh(ref))
            except BaseException as err:  # a bad photo is a result; this is a fault
                future.set_exception(err)
            else:
                self.decoded += 1

    def run(self) -> None:
        """Plan, then decode: the background thread's work."""
        try:
            self.plan()
            self.decode_planned()
        except Exception as err:  # the phase's own discovery will say what is wrong
            logger.info("read-ahead stopped: %s", err)
        finally:
            self.finished.set()

    def take(self, ref: ImageRef, params: Params) -> Decoded | SkipImage | None:
        """This photo's decode if the read-ahead has it or is making it; else None, and
        the read-ahead leaves the photo alone."""
        if params != self.params:
            return None
        with self._lock:
            future = self._slots.pop(ref, None)
        if future is None or future.cancel():
            return None
        try:
            result = future.result()
        except Exception:  # the phase decodes it again, and meets the fault itself
            return None
        with self._lock:  # the phase's batches read in threads of their own
            self.taken += 1
        return result

    def stop(self) -> None:
        """Decode nothing more, and let go of what was not taken."""
        self._stop.set()
        with self._lock:
            for future in self._slots.values():
                future.cancel()
            self._slots.clear()


def hashed() -> dict[str, tuple[int, float, str]]:
    """The running read-ahead's fresh hashes (path to size, mtime, sha256), if any."""
    ahead = _current
    return {} if ahead is None else ahead.hashed


def take(ref: ImageRef, params: Params) -> Decoded | SkipImage | None:
    """The running read-ahead's decode of this photo, if it has one."""
    ahead = _current
    return None if ahead is None else ahead.take(ref, params)


@contextmanager
def reading_ahead(phase: ImagePhase[Any, Any]) -> Iterator[ReadAhead]:
    """Read ahead for `phase` while the block runs; what is left is let go at its end."""
    global _current
    ahead = ReadAhead(phase)
    thread = threading.Thread(target=ahead.run, name="read-ahead", daemon=True)
    _current = ahead
    thread.start()
    try:
        yield ahead
    finally:
        ahead.stop()
        thread.join()
        _current = None
        logger.info("read ahead: %d photos decoded, %d of them taken", ahead.decoded, ahead.taken)
