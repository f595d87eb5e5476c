"""The one mechanism every phase shares: discover, skip what is done, batch, report, record.

A phase says what its work items are and how to read, compute and write a batch.
`run_phase` does the rest, identically for every phase: it skips items finished
by earlier runs (keyed by content plus model), forgets items gone from the library,
records rejected items with their reason, keeps a few batches in flight on the task
runner (threads or Dask) while the flow writes finished ones, publishes the progress
artifact and checks for pause or cancel between batches.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Generic, TypeVar

from prefect import get_run_logger, task
from prefect.context import TaskRunContext
from prefect.futures import PrefectFuture, as_completed

from photoindex.settings import Settings, get_settings
from tasks.catalog import Catalog, chunks, status_row
from tasks.control import checkpoint
from tasks.progress import ProgressReporter

logger = logging.getLogger(__name__)

Item = TypeVar("Item")
Read = TypeVar("Read")
Computed = TypeVar("Computed")


@dataclass(frozen=True)
class Rejection:
    """An item that cannot be processed, and why, in words a person can read."""

    key: str
    path: str
    reason: str
    sha256: str | None = None


@dataclass
class BatchOutcome:
    """Status rows a batch produced; the mechanism records them."""

    rows: list[dict[str, Any]] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for r in self.rows if r["status"] == status)


@dataclass
class PhaseSummary:
    """What one run of a phase did."""

    phase: str
    model: str
    total: int
    reused: int
    processed: int
    skipped: int
    failed: int
    seconds: float = 0.0
    wait_s: float = 0.0  # the flow waiting for batches to be read and computed
    write_s: float = 0.0  # the flow writing results and status rows


class Phase(ABC, Generic[Item, Read, Computed]):
    """What a phase computes; everything else is `run_phase`'s."""

    name: str
    batch_size: int = 16
    serial_compute: bool = True  # False: batches compute in parallel (single-threaded models)
    #: Whether the first batches are ramped (1, 2, 4, ... items, `ramped_chunks`), so the
    #: first results come within one item's time: for a phase whose items take long.
    ramped: bool = True

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.catalog = Catalog(self.settings)

    def init_args(self) -> tuple[Any, ...]:
        """The constructor arguments that rebuild this phase in another process."""
        return (self.settings,)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # A phase travels to task-runner workers as its arguments; the worker's constructor
        # then takes that process's cached models, so each worker loads a model once.
        return (type(self), self.init_args())

    @property
    @abstractmethod
    def model_id(self) -> str: ...

    @abstractmethod
    def discover(self) -> tuple[Sequence[Item], Sequence[Rejection]]:
        """All work items of this phase, and what was rejected while finding them."""

    @abstractmethod
    def key(self, item: Item) -> str:
        """The resume key of an item: its content hash, or a fingerprint."""

    @abstractmethod
    def read(self, batch: Sequence[Item]) -> Read:
        """Load a batch (I/O: decode files, read rows)."""

    @abstractmethod
    def compute(self, batch: Read) -> Computed:
        """Run the model on a loaded batch (pure compute)."""

    @abstractmethod
    def write(self, result: Computed) -> BatchOutcome:
        """Store a computed batch and return a status row per item."""

    def status(self, key: str, path: str, status: str, **extra: Any) -> dict[str, Any]:
        """A status row of this phase."""
        return status_row(key, self.name, self.model_id, path, status, **extra)

    def path(self, item: Item) -> str:
        """Where an item comes from, for status rows."""
        return str(item)

    def failure(self, item: Item, err: BaseException) -> dict[str, Any]:
        """The status row of an item whose batch raised: failed, so the next run retries it."""
        reason = f"{type(err).__name__}: {err}"[:500]
        return self.status(self.key(item), self.path(item), "failed", reason=reason)

    def cache_key(self, batch: Sequence[Item]) -> str:
        """The persisted-result key of a batch: code, phase, model and the items' content."""
        digest = hashlib.sha256(f"{BATCH_CODE_VERSION}:{self.name}:{self.model_id}".encode())
        for item in batch:
            digest.update(f"\n{self.key(item)}:{self.path(item)}".encode())
        return f"photoindex-{self.name}-{digest.hexdigest()[:32]}"

    # resuming over a changing library; a phase without removable items keeps the defaults
    def stale(self, done: Mapping[str, Mapping[str, Any]]) -> list[str]:
        """Keys done earlier whose items are gone from the library."""
        return []

    def forget(self, keys: Sequence[str]) -> None:
        """Drop what this phase stored for these keys."""

    def moved(
        self, items: Sequence[Item], done: Mapping[str, Mapping[str, Any]]
    ) -> list[dict[str, Any]]:
        """Status rows for done items found under a new path (moved, not changed)."""
        return []

    def findings(self, computed: Computed) -> tuple[int, int]:
        """How many items a computed batch looked in for the next phase's work, and how
        much of it found there (`PhaseSpec.found_by`); a phase that finds none: (0, 0)."""
        return 0, 0

    def prepare(self) -> None:
        """Get ready to compute (load the model) before the first batch, when there is work.

        Loading here rather than inside the first batch makes start-up end where the
        progress says it does, and lets the first batch finish at the steady pace.
        """


#: Bump when what a batch computes changes, so persisted batch results are not reused.
BATCH_CODE_VERSION = "1"
#: Waits before each retry of a batch's write.
WRITE_RETRY_DELAYS_S: tuple[float, ...] = (2.0, 5.0, 15.0)
#: A phase fails outright when its first batches all fail: the error is systematic.
SYSTEMATIC_FAILURES = 2

_compute_locks: dict[str, threading.Lock] = {}
_compute_locks_guard = threading.Lock()


def _compute_lock(name: str) -> threading.Lock:
    with _compute_locks_guard:
        return _compute_locks.setdefault(name, threading.Lock())


def _batch_cache_key(_: TaskRunContext, parameters: dict[str, Any]) -> str:
    phase: Phase[Any, Any, Any] = parameters["phase"]
    return phase.cache_key(parameters["batch"])


@task(
    cache_key_fn=_batch_cache_key,
    persist_result=True,
    cache_result_in_memory=False,  # read back from storage once; a session must not hoard them
    cache_expiration=timedelta(days=7),
    task_run_name="{phase.name}-batch",
)
def process_batch(phase: Phase[Any, Any, Any], batch: Sequence[Any]) -> Any:
    """Read and compute one batch, wherever the task runner puts it.

    The result persists under a key made of the items' content and the model, so a
    re-run after a crash takes a batch that was computed but never written from storage.
    Storage is Prefect's result storage (`PREFECT_RESULTS_LOCAL_STORAGE_PATH`, by default
    `$PREFECT_HOME/storage`): point it at shared storage when workers run on other machines.
    Reading is free to overlap; computing is serial per process when the phase says so
    (torch already uses every core), and parallel otherwise (one thread per ONNX call).
    """
    loaded = phase.read(batch)
    if not phase.serial_compute:
        return phase.compute(loaded)
    with _compute_lock(phase.name):
        return phase.compute(loaded)


def write_batch(phase: Phase[Any, Any, Any], computed: Any) -> BatchOutcome:
    """Store one computed batch, in the flow's process; retried after each of
    `WRITE_RETRY_DELAYS_S`, since storage may hiccup.

    A plain call, not a Prefect task: each task run costs Prefect's server 25-40 ms of
    CPU (measured: a flow of 40 no-op tasks), and the small sessions users run most share two
    cores with that server. The batch's own task (`process_batch`) still shows the work.
    """
    for attempt, delay_s in enumerate(WRITE_RETRY_DELAYS_S, start=1):
        try:
            return phase.write(computed)
        except Exception as err:  # what a Prefect task retry would have caught
            get_run_logger().warning(
                "%s: writing a batch failed (%s: %s); retry %d of %d in %.0f s",
                phase.name, type(err).__name__, err, attempt, len(WRITE_RETRY_DELAYS_S), delay_s,
            )  # fmt: skip
            time.sleep(delay_s)
    return phase.write(computed)


def work_order(
    phase: Phase[Item, Any, Any], items: Sequence[Item], done: Mapping[str, Any]
) -> list[Item]:
    """The items a run of `phase` has to do, in the order it does them (by key, so a
    re-run after a crash forms the same batches and finds their persisted results)."""
    return sorted((item for item in items if phase.key(item) not in done), key=phase.key)


def ramped_chunks(items: Sequence[Item], size: int) -> list[list[Item]]:
    """Batches of `size`, the first ones smaller (1, 2, 4, ...): the first results come
    within one photo's time, not one full batch's, and the pace is steady from there."""
    out: list[list[Item]] = []
    start, step = 0, 1
    while start < len(items):
        n = min(step, size)
        out.append(list(items[start : start + n]))
        start += n
        step *= 2
    return out


def ramp_items(chunks: Sequence[Sequence[Item]], size: int) -> int:
    """How many items the small first batches and the first full one hold: each of them
    pays a batch's fixed costs, so the pace they show is slower than the steady one."""
    n = 0
    for chunk in chunks:
        n += len(chunk)
        if len(chunk) >= size:
            break
    return n


def run_phase(phase: Phase[Any, Any, Any]) -> PhaseSummary:
    """Run a phase over its work: the shared loop of batching, progress and resume.

    A bounded number of batches is in flight on the task runner (threads here, or Dask
    workers); the flow writes each as it completes, in whatever order, so the counts
    stay right. A batch that raises marks its items failed (they are retried next run)
    unless nothing has succeeded yet, which means the error is systematic.
    """
    started = time.monotonic()
    # The artifact exists before discovery, so a long scan reads as alive, not stalled.
    reporter = ProgressReporter(
        phase.name, total=0, interval_s=phase.settings.progress_interval_s, stage="scanning"
    )
    reporter.start()
    try:
        return _run(phase, reporter, started)
    finally:
        reporter.stop()  # a phase that raises must not look alive


def _run(phase: Phase[Any, Any, Any], reporter: ProgressReporter, started: float) -> PhaseSummary:
    log = get_run_logger()
    items, rejected = phase.discover()
    done = phase.catalog.done_rows(phase.name, phase.model_id)
    removed = phase.stale(done)
    if removed:
        phase.forget(removed)
        phase.catalog.append(
            "status",
            [
                phase.status(k, done[k]["path"], "removed", sha256=done[k]["sha256"])
                for k in removed
            ],
            name=phase.name,
        )
        log.info("%s: %d items no longer in any library folder, removed", phase.name, len(removed))
    todo = work_order(phase, items, done)
    moved = phase.moved(items, done)
    if moved:
        phase.catalog.append("status", moved, name=phase.name)
    new_rejects = [r for r in rejected if r.key not in done]
    reused = len(items) + len(rejected) - len(todo) - len(new_rejects)
    total = len(items) + len(rejected)
    reporter.total, reporter.current, reporter.todo = total, reused, len(todo) + len(new_rejects)
    reporter.publish()
    log.info(
        "%s: %d items, %d already done (%d moved), %d to do, %d rejected",
        phase.name,
        total,
        reused,
        len(moved),
        len(todo),
        len(new_rejects),
    )
    if new_rejects:
        phase.catalog.append(
            "status",
            [
                phase.status(r.key, r.path, "skipped", sha256=r.sha256, reason=r.reason)
                for r in new_rejects
            ],
            name=phase.name,
        )
        for r in new_rejects:
            log.warning("skipped %s: %s", r.path, r.reason)
        reporter.reject(len(new_rejects))

    processed = skipped = failed = ok_batches = failed_batches = 0
    wait_s = write_s = 0.0
    if todo and phase.settings.task_runner == "threads":  # Dask workers load their own
        reporter.set_stage("loading")
        phase.prepare()
    size = phase.batch_size
    if phase.ramped:
        queue = ramped_chunks(todo, size)
    else:  # a small phase's items spread evenly over the batches in flight
        size = min(size, max(1, math.ceil(len(todo) / phase.settings.batches_in_flight)))
        queue = [list(chunk) for chunk in chunks(todo, size)]
    # The rejects are counted done before any batch: the ramp starts after them. A phase
    # that does not ramp starts its first batches together, and they end close together:
    # that first wave is no pace (it read 8,222 faces a minute for 5,000); and the second
    # runs before the flow's writes of finished batches hold the next ones up (8,962 a
    # minute, on 1,000 small photos, against 5,000 from there on). Both are its ramp.
    first_waves = sum(len(b) for b in queue[: 2 * phase.settings.batches_in_flight])
    reporter.ramp = len(new_rejects) + (ramp_items(queue, size) if phase.ramped else first_waves)
    reporter.batch, reporter.wave = size, phase.settings.batches_in_flight
    queue.reverse()
    in_flight: dict[PrefectFuture[Any], Sequence[Any]] = {}

    def fill() -> None:
        while queue and len(in_flight) < phase.settings.batches_in_flight:
            checkpoint()
            batch = queue.pop()
            in_flight[process_batch.submit(phase, batch)] = batch
            reporter.active += len(batch)

    if queue:
        reporter.begin_work()
    fill()
    reporter.publish()  # say at once that work is in flight: the API's clock starts from it
    while in_flight:
        tick = time.monotonic()
        future = next(as_completed(list(in_flight)))
        batch = in_flight.pop(future)
        reporter.active -= len(batch)
        wait_s += time.monotonic() - tick
        tick = time.monotonic()
        try:
            computed = future.result()
        except Exception as err:
            findings = (0, 0)
            failed_batches += 1
            if ok_batches == 0 and failed_batches >= min(SYSTEMATIC_FAILURES, len(todo)):
                raise
            log.error("%s: a batch of %d failed: %s", phase.name, len(batch), err)
            outcome = BatchOutcome([phase.failure(item, err) for item in batch])
        else:
            ok_batches += 1
            # The next batch reads while this one is written: a batch reads about as long
            # as the one before it computes, so a late start leaves the model waiting.
            fill()
            outcome = write_batch(phase, computed)
            findings = phase.findings(computed)
        phase.catalog.append("status", outcome.rows, name=phase.name)
        write_s += time.monotonic() - tick
        n_ok, n_skip, n_fail = (outcome.count(s) for s in ("indexed", "skipped", "failed"))
        for row in outcome.rows:
            if row["status"] != "indexed":
                log.warning("%s %s: %s", row["status"], row["path"], row["reason"])
        processed, skipped, failed = processed + n_ok, skipped + n_skip, failed + n_fail
        fill()  # after a failed batch (after a good one, it filled before the write)
        reporter.looked += findings[0]
        reporter.found += findings[1]
        reporter.advance(processed=n_ok, skipped=n_skip, failed=n_fail)
    reporter.finish()
    return PhaseSummary(
        phase=phase.name,
        model=phase.model_id,
        total=total,
        reused=reused,
        processed=processed,
        skipped=skipped + len(new_rejects),
        failed=failed,
        seconds=time.monotonic() - started,
        wait_s=wait_s,
        write_s=write_s,
    )
