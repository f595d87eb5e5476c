"""The shared phase loop, driven with a small fake phase: what it skips, reuses, records
and counts, and when a failing batch ends the phase instead of being recorded."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from prefect import flow
from prefect.settings import PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings

from photoindex.settings import Settings
from tasks import phase as phase_module
from tasks.catalog import Catalog
from tasks.phase import BatchOutcome, Phase, PhaseSummary, Rejection, run_phase
from tests.tasks.conftest import Recorder


@dataclass(frozen=True)
class Item:
    key: str
    path: str


@dataclass
class Library:
    """What the fake phase finds and how its items behave; shared by reference, so a test
    can change the library between runs and see what the phase computed."""

    paths: dict[str, str]
    rejected: list[Rejection] = field(default_factory=list)
    unreadable: set[str] = field(default_factory=set)  # written as skipped, with a reason
    broken: set[str] = field(default_factory=set)  # their batch raises
    wait_for_a_write: set[str] = field(default_factory=set)  # their batch raises after one
    failing_writes: int = 0  # so many writes raise before they work again
    computed: list[str] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    forgotten: list[str] = field(default_factory=list)
    written: threading.Event = field(default_factory=threading.Event)


_LIBRARIES: dict[str, Library] = {}
"""By model id: a phase rebuilt from its arguments finds its library again."""


class FakePhase(Phase[Item, list[Item], list[tuple[Item, str | None]]]):
    """Items are keys with paths; computing an item is recording that it was computed."""

    name = "embed"  # a phase of the table, for its progress artifact
    batch_size = 2

    def __init__(self, settings: Settings, model: str) -> None:
        super().__init__(settings)
        self.model = model

    def init_args(self) -> tuple[Any, ...]:
        return (self.settings, self.model)

    @property
    def library(self) -> Library:
        return _LIBRARIES[self.model]

    @property
    def model_id(self) -> str:
        return self.model

    def discover(self) -> tuple[Sequence[Item], Sequence[Rejection]]:
        return [Item(k, p) for k, p in self.library.paths.items()], self.library.rejected

    def key(self, item: Item) -> str:
        return item.key

    def path(self, item: Item) -> str:
        return item.path

    def read(self, batch: Sequence[Item]) -> list[Item]:
        self.library.batch_sizes.append(len(batch))
        keys = {item.key for item in batch}
        if keys & self.library.wait_for_a_write:
            assert self.library.written.wait(30), "no other batch was written"
            raise OSError("disk went away")
        if keys & self.library.broken:
            raise OSError("disk went away")
        return list(batch)

    def compute(self, batch: list[Item]) -> list[tuple[Item, str | None]]:
        self.library.computed += [item.key for item in batch]
        return [
            (item, "unreadable photo" if item.key in self.library.unreadable else None)
            for item in batch
        ]

    def write(self, result: list[tuple[Item, str | None]]) -> BatchOutcome:
        if self.library.failing_writes > 0:
            self.library.failing_writes -= 1
            raise OSError("store busy")
        rows = [
            self.status(item.key, item.path, "skipped" if reason else "indexed", reason=reason)
            for item, reason in result
        ]
        self.library.written.set()
        return BatchOutcome(rows)

    def stale(self, done: Mapping[str, Mapping[str, Any]]) -> list[str]:
        found = set(self.library.paths) | {r.key for r in self.library.rejected}
        return sorted(k for k in done if k not in found)

    def forget(self, keys: Sequence[str]) -> None:
        self.library.forgotten += keys

    def moved(
        self, items: Sequence[Item], done: Mapping[str, Mapping[str, Any]]
    ) -> list[dict[str, Any]]:
        return [
            self.status(i.key, i.path, done[i.key]["status"])
            for i in items
            if i.key in done and done[i.key]["path"] != i.path
        ]


@flow(name="fake-phase")
def run_fake(phase: FakePhase) -> PhaseSummary:
    return run_phase(phase)


#: A phase runs inside a flow run (its logger, its batch tasks): against the test server.
pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    """Two batches in flight; batch results persisted under this test's folder."""
    results = {PREFECT_RESULTS_LOCAL_STORAGE_PATH: tmp_path / "results"}
    with temporary_settings(updates=results):
        yield Settings(data_dir=tmp_path, threads=1, progress_interval_s=0.0)


@pytest.fixture
def library() -> Iterator[tuple[str, Library]]:
    model = f"fake-{uuid4().hex[:8]}"  # its own batch cache keys: no results of other tests
    lib = _LIBRARIES[model] = Library({f"k{i}": f"/photos/{i}.jpg" for i in range(5)})
    yield model, lib
    del _LIBRARIES[model]


def _statuses(settings: Settings, model: str) -> dict[str, tuple[str, str, str | None]]:
    rows = Catalog(settings).query(
        "SELECT key, status, path, reason FROM status WHERE model = ?", (model,)
    )
    return {r["key"]: (r["status"], r["path"], r["reason"]) for r in rows}


def _counts(summary: PhaseSummary) -> tuple[int, int, int, int, int]:
    return summary.total, summary.reused, summary.processed, summary.skipped, summary.failed


def _run_with_a_bad_photo_and_a_rejection(
    settings: Settings, model: str, lib: Library
) -> PhaseSummary:
    """A first run over five photos, one of them unreadable, and a file that is no photo."""
    lib.unreadable = {"k3"}
    lib.rejected = [Rejection("path:/photos/x.txt", "/photos/x.txt", "not an image")]
    return run_fake(FakePhase(settings, model))


def test_a_first_run_records_every_item_and_counts_them(
    settings: Settings, library: tuple[str, Library], recorder: Recorder
) -> None:
    model, lib = library
    summary = _run_with_a_bad_photo_and_a_rejection(settings, model, lib)
    assert _counts(summary) == (6, 0, 4, 2, 0)
    assert sorted(lib.computed) == ["k0", "k1", "k2", "k3", "k4"]
    statuses = _statuses(settings, model)
    assert statuses["k3"] == ("skipped", "/photos/3.jpg", "unreadable photo")
    assert statuses["path:/photos/x.txt"] == ("skipped", "/photos/x.txt", "not an image")
    assert [statuses[f"k{i}"][0] for i in (0, 1, 2, 4)] == ["indexed"] * 4
    last = recorder.updates[-1]
    assert last[0] == 100.0 and last[1] is not None
    assert (last[1].current, last[1].total, last[1].skipped, last[1].done) == (6, 6, 2, True)
    # the pace is trusted after the ramped batches (1, then 2), counted on from the
    # rejected file: it is done before any batch, and says nothing of the pace
    assert (last[1].fresh, last[1].ramp, last[1].batch) == (6, 1 + 3, 2)


class UnrampedPhase(FakePhase):
    batch_size = 4
    ramped = False


class UnrampedOneByOne(UnrampedPhase):
    batch_size = 1


@pytest.mark.parametrize(("phase", "sizes", "ramp"), [
    (FakePhase, [1, 2, 2], 1 + 3),  # 1, then 2, then what is left of 4 (the ramp: 1, 2)
    # no small first batches: its 5 items spread over the two batches in flight (not 4
    # and 1), which, started together, are its ramp
    (UnrampedPhase, [3, 2], 1 + 5),
    # more batches than two in flight: its first two waves of them are its ramp (the
    # second runs before the flow's writes hold the next ones up)
    (UnrampedOneByOne, [1] * 5, 1 + 4),
])  # fmt: skip
def test_a_phase_ramps_its_first_batches_unless_it_says_not_to(
    settings: Settings,
    library: tuple[str, Library],
    recorder: Recorder,
    phase: type[FakePhase],
    sizes: list[int],
    ramp: int,
) -> None:
    model, lib = library
    lib.rejected = [Rejection("path:/photos/x.txt", "/photos/x.txt", "not an image")]
    run_fake(phase(settings, model))
    assert sorted(lib.batch_sizes, reverse=True) == sorted(sizes, reverse=True)
    last = recorder.updates[-1][1]
    assert last is not None and last.ramp == ramp


class FindingPhase(FakePhase):
    """Finds two items of the next phase's work in each item it looks in."""

    def findings(self, computed: list[tuple[Item, str | None]]) -> tuple[int, int]:
        return len(computed), 2 * len(computed)


def test_what_a_phases_batches_find_for_the_next_phase_is_counted(
    settings: Settings, library: tuple[str, Library], recorder: Recorder
) -> None:
    model, lib = library
    run_fake(FindingPhase(settings, model))
    last = recorder.updates[-1][1]
    assert last is not None and (last.looked, last.found) == (5, 10)


def test_a_phase_says_when_it_began_its_scan_and_its_model_load(
    settings: Settings, library: tuple[str, Library], recorder: Recorder
) -> None:
    """The milestones of a session's start-up (`api.weights.startup_milestones`): the scan
    from the phase's start, then the model load, both before its first batch."""
    model, _ = library
    before = time.time()
    run_fake(FakePhase(settings, model))
    last = recorder.updates[-1][1]
    assert last is not None and [stage for stage, _ in last.stage_at] == ["scanning", "loading"]
    times = [at for _, at in last.stage_at]
    assert before <= times[0] <= times[1] <= last.work_started


def test_a_second_run_reuses_what_is_done_and_follows_moves_and_removals(
    settings: Settings, library: tuple[str, Library], recorder: Recorder
) -> None:
    model, lib = library
    _run_with_a_bad_photo_and_a_rejection(settings, model, lib)
    lib.computed.clear()
    lib.paths["k1"] = "/photos/moved/1.jpg"
    del lib.paths["k4"]
    lib.paths["k9"] = "/photos/9.jpg"

    summary = run_fake(FakePhase(settings, model))

    assert lib.computed == ["k9"], "only the new item is computed; moved and skipped are done"
    assert _counts(summary) == (6, 5, 1, 0, 0)
    assert lib.forgotten == ["k4"]
    statuses = _statuses(settings, model)
    assert statuses["k1"] == ("indexed", "/photos/moved/1.jpg", None)
    assert statuses["k4"][0] == "removed"
    assert statuses["k3"][0] == "skipped"
    assert statuses["k9"][0] == "indexed"


def test_a_failed_batch_after_a_good_one_is_recorded_and_retried_next_run(
    settings: Settings, library: tuple[str, Library], recorder: Recorder
) -> None:
    model, lib = library
    # Batches go in key order, 1 then 2 items: k0 first, then k1 and k2 (after k0 is written).
    lib.wait_for_a_write = {"k1"}
    summary = run_fake(FakePhase(settings, model))
    assert _counts(summary) == (5, 0, 3, 0, 2)
    statuses = _statuses(settings, model)
    assert statuses["k1"] == ("failed", "/photos/1.jpg", "OSError: disk went away")
    assert statuses["k2"][0] == "failed"
    assert recorder.updates[-1][1] is not None and recorder.updates[-1][1].failed == 2

    lib.wait_for_a_write.clear()
    lib.computed.clear()
    again = run_fake(FakePhase(settings, model))
    assert sorted(lib.computed) == ["k1", "k2"]
    assert _counts(again) == (5, 3, 2, 0, 0)
    assert {s for s, _, _ in _statuses(settings, model).values()} == {"indexed"}


def test_a_write_that_fails_is_retried_and_one_that_keeps_failing_fails_the_phase(
    settings: Settings,
    library: tuple[str, Library],
    recorder: Recorder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model, lib = library
    monkeypatch.setattr(phase_module, "WRITE_RETRY_DELAYS_S", (0.0, 0.0))
    lib.failing_writes = 2  # the first batch's write fails twice, then works
    summary = run_fake(FakePhase(settings, model))
    assert _counts(summary) == (5, 0, 5, 0, 0)
    assert {s for s, _, _ in _statuses(settings, model).values()} == {"indexed"}

    lib.paths["k9"] = "/photos/9.jpg"
    lib.failing_writes = 3  # more than the retries: the error is not a hiccup
    with pytest.raises(OSError, match="store busy"):
        run_fake(FakePhase(settings, model))
    assert "k9" not in _statuses(settings, model)


def test_the_first_batches_all_failing_fail_the_phase(
    settings: Settings, library: tuple[str, Library], recorder: Recorder
) -> None:
    model, lib = library
    lib.broken = set(lib.paths)
    with pytest.raises(OSError, match="disk went away"):
        run_fake(FakePhase(settings, model))
    assert lib.computed == []
    assert "indexed" not in {s for s, _, _ in _statuses(settings, model).values()}


def test_one_item_to_do_that_fails_fails_the_phase(
    settings: Settings, library: tuple[str, Library], recorder: Recorder
) -> None:
    model, lib = library
    lib.paths = {"k0": "/photos/0.jpg"}
    lib.broken = {"k0"}
    with pytest.raises(OSError, match="disk went away"):
        run_fake(FakePhase(settings, model))
    assert _statuses(settings, model) == {}, "a systematic error is raised, not recorded"
