"""A warm indexer's read-ahead: the embed phase takes the photos decoded for it, and only
exact ones (same file, same decode), in the order it would have decoded them itself."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from photoindex.settings import Settings
from tasks import readahead
from tasks.decode import Decoded, SkipImage
from tasks.discover import ImageRef
from tasks.embed import EmbedPhase
from tasks.phase import work_order
from tasks.readahead import ReadAhead, params_of, reading_ahead
from tests.photos import CORRUPT, real_photos

pytestmark = pytest.mark.usefixtures("data_dir")


@pytest.fixture
def phase(tmp_path: Path, settings: Settings) -> EmbedPhase:
    """The embed phase of a session with faces, over six real photos and a cut JPEG."""
    root = tmp_path / "library"
    root.mkdir()
    for name, photo in list(real_photos().items())[:6]:
        photo.convert("RGB").save(root / f"{name}.jpg", "JPEG", quality=90)
    cut = io.BytesIO()
    real_photos()["chelsea"].save(cut, "JPEG", quality=90)
    (root / "cut.jpg").write_bytes(cut.getvalue()[: len(cut.getvalue()) // 2])
    return EmbedPhase(root, settings, faces=True)


def _todo(phase: EmbedPhase) -> list[ImageRef]:
    """What the phase's loop decodes, in its order (`tasks.phase._run`)."""
    items, _ = phase.discover()
    return work_order(phase, items, phase.catalog.done_rows(phase.name, phase.model_id))


def _same(left: Decoded | SkipImage, right: Decoded | SkipImage) -> bool:
    if isinstance(left, SkipImage) or isinstance(right, SkipImage):
        return type(left) is type(right) and str(left) == str(right)
    return (left.width, left.height, left.order) == (right.width, right.height, right.order) and (
        np.array_equal(left.pixels, right.pixels)
    )


def test_the_phase_takes_the_photos_read_ahead_in_its_own_order(phase: EmbedPhase) -> None:
    ahead = ReadAhead(phase, limit=4)
    planned = ahead.plan()
    todo = _todo(phase)
    assert len(todo) == 7 and planned == todo[:4]
    ahead.decode_planned()
    assert ahead.decoded == 4

    taken = [ahead.take(ref, params_of(phase)) for ref in todo]
    assert all(t is not None for t in taken[:4]) and taken[4:] == [None] * 3
    assert ahead.taken == 4
    for ref, got in zip(todo[:4], taken, strict=False):
        assert got is not None and _same(got, phase.decode_fresh(ref))
    # A photo is handed over once: the read-ahead holds nothing after it was taken.
    assert ahead.take(todo[0], params_of(phase)) is None


def test_a_bad_photo_read_ahead_is_its_reason(phase: EmbedPhase) -> None:
    cut = next(ref for ref in _todo(phase) if ref.path.endswith("cut.jpg"))
    ahead = ReadAhead(phase, limit=7)
    ahead.plan()
    ahead.decode_planned()
    got = ahead.take(cut, params_of(phase))
    assert isinstance(got, SkipImage) and str(got).startswith(CORRUPT)


def test_photos_done_already_are_not_read_ahead(phase: EmbedPhase) -> None:
    todo = _todo(phase)
    phase.catalog.append("status", [phase.row(ref, "indexed") for ref in todo[:3]], name="t")
    assert ReadAhead(phase, limit=8).planned() == todo[3:]


def test_another_file_or_another_decode_is_not_taken(phase: EmbedPhase) -> None:
    ahead = ReadAhead(phase, limit=2)
    ref = ahead.plan()[0]
    ahead.decode_planned()
    changed = ImageRef(ref.path, ref.sha256, ref.size, ref.mtime + 1.0)  # touched since
    assert ahead.take(changed, params_of(phase)) is None
    smaller = (448, phase.side_slack, "RGB")  # the embed phase of a session without faces
    assert ahead.take(ref, smaller) is None
    assert ahead.take(ref, params_of(phase)) is not None


def test_a_photo_asked_for_first_is_the_phases_to_decode(phase: EmbedPhase) -> None:
    ahead = ReadAhead(phase, limit=3)
    first, *rest = ahead.plan()
    assert ahead.take(first, params_of(phase)) is None  # not decoded yet: the phase does it
    ahead.decode_planned()
    assert ahead.decoded == 2  # the read-ahead skipped it
    assert [ahead.take(ref, params_of(phase)) is not None for ref in rest] == [True, True]


def test_the_phase_reads_through_a_running_read_ahead(phase: EmbedPhase) -> None:
    todo = _todo(phase)
    with reading_ahead(phase) as ahead:
        assert ahead.finished.wait(60)  # as a session's start-up gives it time to
        prepared = phase.read(todo)
    assert ahead.decoded == ahead.taken == len(todo)
    assert readahead._current is None  # nothing is held after the session
    assert [Path(ref.path).name for ref, _ in prepared.skipped] == ["cut.jpg"]
    assert prepared.pixels is not None and prepared.pixels.shape[0] == 6
    fresh = phase.read(todo)  # no read-ahead now: every photo from its file
    assert fresh.pixels is not None and bool((fresh.pixels == prepared.pixels).all())


def test_the_phases_scan_takes_the_hashes_the_read_ahead_took(
    phase: EmbedPhase, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks import discover

    hashed: list[str] = []
    real = discover._hash_stream

    def counting(*args: Any, **kwargs: Any) -> Any:
        hashed.append("x")
        return real(*args, **kwargs)

    monkeypatch.setattr(discover, "_hash_stream", counting)
    with reading_ahead(phase) as ahead:
        assert ahead.finished.wait(60)
        assert len(hashed) == 7  # the read-ahead's scan: every photo is new
        items, _ = phase.discover()
    assert len(hashed) == 7, "the phase hashed files the read-ahead had just hashed"
    taken = {path: sha for path, (_, _, sha) in ahead.hashed.items()}
    assert {ref.path: ref.sha256 for ref in items} == taken
