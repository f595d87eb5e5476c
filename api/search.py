"""What the library holds, for the API: text and photo search, persons, crops, thumbnails.

Models, vectors and the catalog are imported lazily, so the progress endpoints never
load them. Each blocking call runs in a worker thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from api.schemas import Person, SearchHit, SearchSort
from photoindex.settings import Settings

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

logger = logging.getLogger(__name__)

_LOCAL_STORE = threading.Lock()
"""Held while this process searches, opens or closes the embedded vector store."""

IDLE_CLOSE_S = 1.0
"""Close the embedded vector store after this long without a search. It locks its folder,
and an index run waits (up to 2 minutes) for the lock: it gets it within this."""
MAX_HOLD_S = 10.0
"""Under searches that never pause, let go of the local store after this long anyway (the
embed phase waits 120 s for the store, `tasks.embed.STORE_WAIT_S`) ..."""
YIELD_S = 0.3
"""... and wait this long before opening it again, so a waiting index run (it polls every
50 ms) can take it. Reopening costs about 0.1 s, so letting go often is cheap."""
TEXT_CACHE_SIZE = 256
"""Text embeddings remembered per query string (about 2 KB each at width 512)."""


class LibraryUnavailable(Exception):
    """Search or the catalog cannot serve now (no model weights, store busy, flows missing)."""


@dataclass(frozen=True)
class SearchQuery:
    """What to search for: a text or an indexed photo, and which photos may come back."""

    text: str | None = None
    like: str | None = None
    """An indexed photo's id (its sha256): photos that look like it ("more like this")."""
    k: int = 10
    min_score: float | None = None
    """Leave out matches whose cosine score is below this."""
    after: datetime | None = None
    """Captured at or after this wall-clock time."""
    before: datetime | None = None
    """Captured before this wall-clock time."""
    person: str | None = None
    """Only photos in which this person appears."""
    sort: SearchSort = "relevance"


class PhotoNotFound(Exception):
    """No indexed photo has this id."""


class PersonNotFound(Exception):
    """No person has this id."""


@dataclass
class SearchResult:
    """Hits, and where the search's time went (seconds)."""

    hits: list[SearchHit]
    encode_s: float = 0.0
    """CLIP text encoder; 0 when the query's embedding was remembered (or no text)."""
    open_s: float = 0.0
    """Opening the vector store, 0 when already open."""
    vectors_s: float = 0.0
    """The vector search itself."""

    def server_timing(self) -> str:
        """The `Server-Timing` header value, in milliseconds."""
        parts = (("encode", self.encode_s), ("open", self.open_s), ("vectors", self.vectors_s))
        return ", ".join(f"{name};dur={seconds * 1000:.2f}" for name, seconds in parts)


class LocalStoreHolder:
    """Keeps the embedded vector store open between searches and lets go of it when idle.

    The embedded store locks its folder for one process; an index run waiting for it polls
    every 50 ms. Opening it costs about 0.1 s (20k vectors), so it stays open while
    searches come; after `idle_s` without one it is closed, releasing the lock for an
    index run. `idle_s=0` closes it after every search.
    """

    def __init__(
        self,
        idle_s: float = IDLE_CLOSE_S,
        max_hold_s: float = MAX_HOLD_S,
        yield_s: float = YIELD_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.idle_s = idle_s
        self.max_hold_s = max_hold_s
        self.yield_s = yield_s
        self._clock = clock
        self._opened_at: float | None = None
        self._last_used = 0.0
        self._released_at: float | None = None
        self._timer: threading.Timer | None = None
        self.opens = 0
        """How many times a search found the store closed (for the benchmark)."""

    @contextmanager
    def hold(self) -> Iterator[None]:
        """One search at a time on the local store; it stays open until idle."""
        with _LOCAL_STORE:
            if self._opened_at is None:
                if self._released_at is not None:
                    # Just let go after holding it long: give a waiting index run its turn.
                    time.sleep(max(0.0, self._released_at + self.yield_s - self._clock()))
                    self._released_at = None
                self._opened_at = self._clock()
                self.opens += 1
            try:
                yield
            except BaseException:
                self._release()
                raise
            self._last_used = self._clock()
            if self.idle_s <= 0:
                self._release()
            elif self._last_used - self._opened_at >= self.max_hold_s:
                self._release()
                self._released_at = self._clock()
            elif self._timer is None:
                self._arm(self.idle_s)

    def _arm(self, delay: float) -> None:
        self._timer = threading.Timer(delay, self._on_timer)
        self._timer.daemon = True
        self._timer.start()

    def _on_timer(self) -> None:
        with _LOCAL_STORE:
            self._timer = None
            if self._opened_at is None:
                return
            idle = self._clock() - self._last_used
            if idle >= self.idle_s:
                self._release()
                logger.debug("closed the local vector store after %.1f s idle", idle)
            else:
                self._arm(self.idle_s - idle)

    def _release(self) -> None:
        from tasks.vectors import close_clients

        close_clients()
        self._opened_at = None

    def close(self) -> None:
        """Close the store now (at shutdown)."""
        with _LOCAL_STORE:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._opened_at is not None:
                self._release()


class TextSearch:
    """Photo search with the configured CLIP model and vector store.

    One per app: it remembers recent query embeddings and keeps the embedded store open
    between searches (see `LocalStoreHolder`).
    """

    def __init__(
        self,
        settings: Settings,
        idle_close_s: float = IDLE_CLOSE_S,
        text_cache_size: int = TEXT_CACHE_SIZE,
    ) -> None:
        self.settings = settings
        self.local = LocalStoreHolder(idle_close_s)
        self.text_cache_size = text_cache_size
        self._texts: OrderedDict[str, npt.NDArray[np.float32]] = OrderedDict()
        self._texts_lock = threading.Lock()

    async def search(self, query: SearchQuery) -> SearchResult:
        """The photos that best match the query and pass its filters, best first."""
        return await anyio.to_thread.run_sync(self._search, query)

    def close(self) -> None:
        """Release the embedded vector store."""
        self.local.close()

    def _embed(self, query: str) -> tuple[npt.NDArray[np.float32], float]:
        """The query's embedding, and the seconds spent encoding it (0 if remembered)."""
        from tasks.models.registry import clip_embedder

        with self._texts_lock:
            vector = self._texts.get(query)
            if vector is not None:
                self._texts.move_to_end(query)
                return vector, 0.0
        started = time.perf_counter()
        vector = clip_embedder(self.settings).embed_text([query])[0]
        spent = time.perf_counter() - started
        if self.text_cache_size > 0:
            with self._texts_lock:
                self._texts[query] = vector
                while len(self._texts) > self.text_cache_size:
                    self._texts.popitem(last=False)
        return vector, spent

    def _person_photos(self, person: str) -> frozenset[str]:
        from tasks.catalog import Catalog

        rows = Catalog(self.settings).query(
            "SELECT p.person_id, f.image_sha256 FROM persons p "
            "LEFT JOIN person_faces pf USING (person_id) LEFT JOIN faces f USING (face_id) "
            "WHERE p.person_id = ?",
            (person,),
        )
        if not rows:
            raise PersonNotFound(f"Person not found: {person}")
        return frozenset(r["image_sha256"] for r in rows if r["image_sha256"])

    def _search(self, query: SearchQuery) -> SearchResult:
        from tasks.models.clip import ClipModelError
        from tasks.models.registry import clip_embedder
        from tasks.vectors import SearchFilter, VectorStore, VectorStoreBusy

        try:
            only = self._person_photos(query.person) if query.person else None
            vector, encode_s = (
                self._embed(query.text) if query.text is not None else (None, 0.0)
            )
            model_id = clip_embedder(self.settings).model_id
            with self._store():
                started = time.perf_counter()
                store = VectorStore(model_id, self.settings)
                opened = time.perf_counter()
                if query.like is not None:
                    vector = store.vectors([query.like]).get(query.like)
                    if vector is None:
                        raise PhotoNotFound(f"No indexed photo has the id {query.like}")
                assert vector is not None
                where = SearchFilter(
                    after=query.after,
                    before=query.before,
                    only=only,
                    exclude=frozenset([query.like]) if query.like else frozenset(),
                )
                hits = store.search(vector, query.k, where, query.min_score)
                done = time.perf_counter()
        except (ClipModelError, VectorStoreBusy) as err:
            raise LibraryUnavailable(str(err)) from err
        return SearchResult(
            hits=sort_hits([search_hit(p, sc, data) for p, sc, data in hits], query.sort),
            encode_s=encode_s,
            open_s=opened - started,
            vectors_s=done - opened,
        )

    @contextmanager
    def _store(self) -> Iterator[None]:
        if self.settings.qdrant_url:
            yield  # a Qdrant server: one client for the process, no folder lock
        else:
            with self.local.hold():
                yield


def search_hit(path: str, score: float, payload: dict[str, Any]) -> SearchHit:
    """One result as the API shows it."""
    sha = payload.get("sha256")
    taken = payload.get("taken_at")
    return SearchHit(
        path=path,
        score=score,
        photo_id=sha if isinstance(sha, str) else None,
        taken_at=taken if isinstance(taken, str) else None,
        thumbnail_url=f"/api/v1/photos/{sha}/thumbnail" if isinstance(sha, str) else None,
        payload=_scalars(payload),
    )


def sort_hits(hits: list[SearchHit], sort: SearchSort) -> list[SearchHit]:
    """Best first, or by capture time (photos without one last, best first among them)."""
    if sort == "relevance":
        return hits
    dated = sorted((h for h in hits if h.taken_at), key=lambda h: h.taken_at or "")
    if sort == "newest":
        dated.reverse()
    return dated + [h for h in hits if not h.taken_at]


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
                representative_face_id=(
                    None if (face := row.get("representative_face_id")) is None else str(face)
                ),
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


THUMB_SIDE = 320
"""Long side of a thumbnail, in pixels (a grid cell is about 160 px; 2x for sharp screens)."""
THUMB_QUALITY = 80
THUMBS = "thumbs"
"""Folder of cached thumbnails in the data folder: `thumbs/<2 hex>/<sha256>.jpg`."""


class PhotoDirectory:
    """Thumbnails of indexed photos, made on first request and cached in the data folder."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def thumbnail(self, photo_id: str) -> Path | None:
        """A small JPEG of an indexed photo (by its sha256); None if no indexed photo has it."""
        return await anyio.to_thread.run_sync(self._thumbnail, photo_id)

    def _source(self, photo_id: str) -> str | None:
        """A path where the photo's content lies now, as the catalog's latest scan found it."""
        import os

        from tasks.catalog import Catalog

        rows = Catalog(self.settings).query(
            "SELECT f.raw_path FROM files f JOIN images i ON i.sha256 = f.sha256 "
            "WHERE f.sha256 = ? AND i.status = 'indexed' ORDER BY f.path LIMIT 1",
            (photo_id,),
        )
        return os.fsdecode(rows[0]["raw_path"]) if rows else None

    def _thumbnail(self, photo_id: str) -> Path | None:
        import os
        import tempfile

        from tasks.decode import SkipImage, decode_image

        cached = self.settings.data_dir / THUMBS / photo_id[:2] / f"{photo_id}.jpg"
        if cached.is_file():
            return cached
        source = self._source(photo_id)
        if source is None:
            return None
        try:
            decoded = decode_image(
                source, max_side=THUMB_SIDE, max_pixels=self.settings.max_image_pixels
            )
        except SkipImage as err:  # moved or damaged since the scan
            logger.info("no thumbnail for %s: %s", photo_id, err.reason)
            return None
        image = decoded.image
        image.thumbnail((THUMB_SIDE, THUMB_SIDE))
        cached.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cached.parent, prefix=".", suffix=".jpg.tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                image.save(out, "JPEG", quality=THUMB_QUALITY)
            os.replace(tmp, cached)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return cached
