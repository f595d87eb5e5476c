"""Finding a phase's work: walk a photo folder, recognise images by content, hash them."""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import stat
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from PIL import features

logger = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20
HEAD_SIZE = 64

IMAGE_EXTENSIONS = frozenset(
    {
        ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".webp", ".bmp", ".dib",
        ".tif", ".tiff", ".heic", ".heif", ".hif", ".avif",
    }
)  # fmt: skip
RAW_EXTENSIONS = frozenset(
    {
        ".arw", ".cr2", ".cr3", ".crw", ".dng", ".nef", ".nrw", ".orf", ".pef", ".raf",
        ".raw", ".rw2", ".rwl", ".sr2", ".srf", ".srw", ".x3f",
    }
)  # fmt: skip
SKIPPED_DIRS = frozenset({"@eaDir", "#recycle", "#snapshot", "__MACOSX", "lost+found"})

NOT_AN_IMAGE = "not an image: content is not a known image format"

_HEIC_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"})
_HEIF_BRANDS = frozenset({b"mif1", b"msf1"})
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_BMP_HEADER_SIZES = frozenset({12, 40, 52, 56, 64, 108, 124})


@dataclass(frozen=True)
class ImageRef:
    """One image file found on disk; `path` is the os.fsdecode'd path and opens as is."""

    path: str
    sha256: str
    size: int
    mtime: float


@dataclass(frozen=True)
class Rejected:
    """A file that looks like a photo but cannot be indexed, with a reason a person can read."""

    path: str
    reason: str


def sniff_format(head: bytes) -> str | None:
    """The image format named by a file's first bytes (e.g. "JPEG", "HEIC"), or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if head[:2] == b"BM" and len(head) >= 18:
        if int.from_bytes(head[14:18], "little") in _BMP_HEADER_SIZES:
            return "BMP"
        return None
    if head[4:8] == b"ftyp":
        return _ftyp_format(head)
    return None


def _ftyp_format(head: bytes) -> str | None:
    box_end = min(len(head), int.from_bytes(head[0:4], "big"))
    major = head[8:12]
    compatible = {head[i : i + 4] for i in range(16, box_end - 3, 4)}
    if major in _AVIF_BRANDS:
        return "AVIF"
    if major in _HEIC_BRANDS:
        return "HEIC"
    if compatible & _AVIF_BRANDS:
        return "AVIF"
    if compatible & _HEIC_BRANDS:
        return "HEIC"
    if ({major} | compatible) & _HEIF_BRANDS:
        return "HEIF"
    return None  # MP4, MOV and other ISO media files are not images.


@cache
def decodable_formats() -> frozenset[str]:
    """Image formats Pillow decodes here: never HEIC; AVIF and WebP when Pillow has them."""
    formats = {"JPEG", "PNG", "GIF", "BMP", "TIFF"}
    for optional in ("webp", "avif"):
        if features.check(optional):  # type: ignore[no-untyped-call]
            formats.add(optional.upper())
    return frozenset(formats)


def _hash_stream(stream: io.RawIOBase, head: bytes = b"") -> str:
    digest = hashlib.sha256(head)
    buffer = bytearray(CHUNK_SIZE)
    view = memoryview(buffer)
    while n := stream.readinto(buffer):
        digest.update(view[:n])
    return digest.hexdigest()


def hash_file(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's content as hex, read in 1 MiB chunks."""
    with open(path, "rb", buffering=0) as stream:
        return _hash_stream(stream)


@dataclass(frozen=True)
class _Candidate:
    path: str
    st: os.stat_result
    via_link: bool

    def rank(self) -> tuple[bool, str]:
        return (self.via_link, self.path)


class _Walk:
    """One recursive walk; real folders first, folder symlinks afterwards, each folder once."""

    def __init__(self) -> None:
        self.visited: set[tuple[int, int]] = set()
        self.files: dict[tuple[int, int], _Candidate] = {}
        self.rejected: list[Rejected] = []
        self.folders: list[str] = []
        self.linked_folders: deque[tuple[str, os.stat_result]] = deque()

    def run(self, root: str, root_st: os.stat_result) -> None:
        self.visited.add((root_st.st_dev, root_st.st_ino))
        self.folders.append(root)
        while self.folders or self.linked_folders:
            if self.folders:
                self._scan(self.folders.pop())
                continue
            path, st = self.linked_folders.popleft()
            key = (st.st_dev, st.st_ino)
            if key in self.visited:
                logger.debug("not following %r: folder already walked (cycle or alias)", path)
                continue
            self.visited.add(key)
            self._scan(path)

    def _scan(self, folder: str) -> None:
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except PermissionError:
            self.rejected.append(Rejected(folder, "permission denied (folder)"))
            return
        except OSError as exc:
            self.rejected.append(Rejected(folder, f"unreadable folder: {exc.strerror}"))
            return
        for entry in entries:
            try:
                self._visit(entry)
            except OSError as exc:  # e.g. the entry vanished while walking
                if _looks_like_image(entry.name):
                    self.rejected.append(Rejected(entry.path, f"unreadable: {exc.strerror}"))

    def _visit(self, entry: os.DirEntry[str]) -> None:
        if entry.name.startswith("."):
            return  # hidden files and folders (.git, .thumbnails, .DS_Store, ._AppleDouble)
        if entry.is_symlink():
            self._visit_link(entry)
        elif entry.is_dir(follow_symlinks=False):
            if entry.name not in SKIPPED_DIRS:
                st = entry.stat(follow_symlinks=False)
                key = (st.st_dev, st.st_ino)
                if key not in self.visited:
                    self.visited.add(key)
                    self.folders.append(entry.path)
        elif entry.is_file(follow_symlinks=False):
            self._add_file(entry.path, entry.stat(follow_symlinks=False), via_link=False)
        # FIFOs, sockets and devices are never opened: reading one could block.

    def _visit_link(self, entry: os.DirEntry[str]) -> None:
        try:
            st = os.stat(entry.path)
        except FileNotFoundError:
            if _looks_like_image(entry.name):
                self.rejected.append(Rejected(entry.path, "broken symlink"))
            return
        except PermissionError:
            if _looks_like_image(entry.name):
                self.rejected.append(Rejected(entry.path, "permission denied"))
            return
        except OSError as exc:
            if _looks_like_image(entry.name):
                reason = (
                    "symlink loop" if exc.errno == errno.ELOOP else f"unreadable: {exc.strerror}"
                )
                self.rejected.append(Rejected(entry.path, reason))
            return
        if stat.S_ISDIR(st.st_mode):
            if entry.name not in SKIPPED_DIRS:
                self.linked_folders.append((entry.path, st))
        elif stat.S_ISREG(st.st_mode):
            self._add_file(entry.path, st, via_link=True)

    def _add_file(self, path: str, st: os.stat_result, via_link: bool) -> None:
        # One file reached through several names (symlinks, hard links) is listed once,
        # preferring a real name over a symlink.
        candidate = _Candidate(path, st, via_link)
        key = (st.st_dev, st.st_ino)
        current = self.files.get(key)
        if current is None or candidate.rank() < current.rank():
            self.files[key] = candidate


def _looks_like_image(name: str) -> bool:
    suffix = os.path.splitext(name)[1].lower()
    return suffix in IMAGE_EXTENSIONS or suffix in RAW_EXTENSIONS


def _classify(
    candidate: _Candidate,
    known: Mapping[str, tuple[int, float, str]],
    formats: frozenset[str],
) -> ImageRef | Rejected | None:
    path, st = candidate.path, candidate.st
    previous = known.get(path)
    if previous is not None and previous[0] == st.st_size and previous[1] == st.st_mtime:
        return ImageRef(path, previous[2], st.st_size, st.st_mtime)
    suffix = os.path.splitext(path)[1].lower()
    image_name = suffix in IMAGE_EXTENSIONS
    if suffix in RAW_EXTENSIONS:
        reason = "empty file" if st.st_size == 0 else f"unsupported format: RAW ({suffix[1:]})"
        return Rejected(path, reason)
    if st.st_size == 0:
        return Rejected(path, "empty file") if image_name else None
    try:
        with open(path, "rb", buffering=0) as stream:
            head = stream.read(HEAD_SIZE)
            kind = sniff_format(head)
            if kind is None:
                return Rejected(path, NOT_AN_IMAGE) if image_name else None
            if kind not in formats:
                return Rejected(path, f"unsupported format: {kind}")
            sha256 = _hash_stream(stream, head)
    except PermissionError:
        return Rejected(path, "permission denied") if image_name else None
    except OSError as exc:
        return Rejected(path, f"unreadable: {exc.strerror}") if image_name else None
    return ImageRef(path, sha256, st.st_size, st.st_mtime)


def discover_images(
    folder: Path,
    known: Mapping[str, tuple[int, float, str]] | None = None,
) -> tuple[list[ImageRef], list[Rejected]]:
    """Every image under `folder`, sorted by path, and the photo-like files that cannot be used."""
    root = os.fspath(folder)
    root_st = os.stat(root)
    if not stat.S_ISDIR(root_st.st_mode):
        raise NotADirectoryError(f"not a folder: {root}")
    walk = _Walk()
    walk.run(root, root_st)
    formats = decodable_formats()
    refs: list[ImageRef] = []
    rejected = list(walk.rejected)
    for candidate in walk.files.values():
        result = _classify(candidate, known or {}, formats)
        if isinstance(result, ImageRef):
            refs.append(result)
        elif isinstance(result, Rejected):
            rejected.append(result)
    refs.sort(key=lambda ref: os.fsencode(ref.path))
    rejected.sort(key=lambda rej: os.fsencode(rej.path))
    return refs, rejected


def by_content(refs: Sequence[ImageRef]) -> list[ImageRef]:
    """The same photo stored twice is one item: content decides, not the path (the first
    path of each content is its path)."""
    unique: dict[str, ImageRef] = {}
    for ref in refs:
        unique.setdefault(ref.sha256, ref)
    return list(unique.values())


def count_photos(
    folder: Path, known: Mapping[str, tuple[int, float, str]] | None = None
) -> tuple[int, int]:
    """A fast estimate before any hashing: (photo files, those new or changed since the
    last scan), by name, size and mtime alone. Sessions report it within a second."""
    root = os.fspath(folder)
    walk = _Walk()
    walk.run(root, os.stat(root))
    photos = new = 0
    for candidate in walk.files.values():
        if os.path.splitext(candidate.path)[1].lower() not in IMAGE_EXTENSIONS:
            continue
        photos += 1
        previous = (known or {}).get(candidate.path)
        st = candidate.st
        if previous is None or previous[0] != st.st_size or previous[1] != st.st_mtime:
            new += 1
    return photos, new
