"""The one mechanism every phase shares: discover, skip what is done, batch, report, record.

A phase says what its work items are and how to read, compute and write a batch.
`run_phase` does the rest, identically for every phase: it skips items finished
by earlier runs (keyed by content plus model), records rejected items with their
reason, reads the next batch while the current one computes, publishes the progress
artifact and checks for pause or cancel between batches.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture

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
    read_wait_s: float = 0.0  # time the loop waited for reading (decoding) beyond compute
    compute_s: float = 0.0
    write_s: float = 0.0


class Phase(ABC, Generic[Item, Read, Computed]):
    """What a phase computes; everything else is `run_phase`'s."""

    name: str
    batch_size: int = 16

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.catalog = Catalog(self.settings)

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


@task(cache_policy=NO_CACHE, task_run_name="{phase.name}-read")
def read_batch(phase: Phase[Any, Any, Any], batch: Sequence[Any]) -> Any:
    """Load one batch."""
    return phase.read(batch)


@task(cache_policy=NO_CACHE, task_run_name="{phase.name}-compute")
def compute_batch(phase: Phase[Any, Any, Any], loaded: Any) -> Any:
    """Compute one loaded batch."""
    return phase.compute(loaded)


@task(
    cache_policy=NO_CACHE,
    retries=3,
    retry_delay_seconds=[2, 5, 15],
    task_run_name="{phase.name}-write",
)
def write_batch(phase: Phase[Any, Any, Any], computed: Any) -> BatchOutcome:
    """Store one computed batch; retried, since storage may hiccup."""
    return phase.write(computed)


def run_phase(phase: Phase[Any, Any, Any]) -> PhaseSummary:
    """Run a phase over its work: the shared loop of batching, progress and resume."""
    log = get_run_logger()
    started = time.monotonic()
    # The artifact exists before discovery, so a long scan reads as alive, not stalled.
    reporter = ProgressReporter(phase.name, total=0, interval_s=phase.settings.progress_interval_s)
    reporter.start()
    items, rejected = phase.discover()
    done = phase.catalog.done_keys(phase.name, phase.model_id)
    todo = [item for item in items if phase.key(item) not in done]
    new_rejects = [r for r in rejected if r.key not in done]
    reused = len(items) + len(rejected) - len(todo) - len(new_rejects)
    total = len(items) + len(rejected)
    reporter.total, reporter.current = total, reused
    reporter.publish()
    log.info(
        "%s: %d items, %d already done, %d to do, %d rejected",
        phase.name,
        total,
        reused,
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
        reporter.advance(skipped=len(new_rejects))

    processed = skipped = failed = 0
    read_wait = compute_s = write_s = 0.0
    batches = list(chunks(todo, phase.batch_size))
    pending: PrefectFuture[Any] | None = read_batch.submit(phase, batches[0]) if batches else None
    for index in range(len(batches)):
        checkpoint()
        assert pending is not None
        tick = time.monotonic()
        loaded = pending.result()
        read_wait += time.monotonic() - tick
        # Read the next batch while this one computes.
        pending = read_batch.submit(phase, batches[index + 1]) if index + 1 < len(batches) else None
        tick = time.monotonic()
        computed = compute_batch(phase, loaded)
        compute_s += time.monotonic() - tick
        tick = time.monotonic()
        outcome = write_batch(phase, computed)
        phase.catalog.append("status", outcome.rows, name=phase.name)
        write_s += time.monotonic() - tick
        n_ok, n_skip, n_fail = (outcome.count(s) for s in ("indexed", "skipped", "failed"))
        for row in outcome.rows:
            if row["status"] != "indexed":
                log.warning("%s %s: %s", row["status"], row["path"], row["reason"])
        processed, skipped, failed = processed + n_ok, skipped + n_skip, failed + n_fail
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
        read_wait_s=read_wait,
        compute_s=compute_s,
        write_s=write_s,
    )
