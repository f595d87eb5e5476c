"""One progress artifact per phase, throttled, with machine-readable counts."""

from __future__ import annotations

import contextvars
import logging
import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from uuid import UUID

from prefect.artifacts import create_progress_artifact, update_progress_artifact

from photoindex.phases import BY_KEY, SESSION_ARTIFACT

logger = logging.getLogger(__name__)


#: What a session or phase is doing before its items are in flight, as the API says it.
STAGES = {
    "queued": "Waiting for the session process to start",
    "starting": "Starting the session",
    "scanning": "Finding and hashing new photos",
    "loading": "Loading the model (its libraries too, the first time in a process)",
    "working": "",
}


@dataclass(frozen=True)
class Counts:
    """What a phase has done so far; `current` includes skipped and failed items."""

    current: int
    total: int
    skipped: int = 0
    failed: int = 0
    per_minute: float = 0.0
    done: bool = False
    active: int = 0  # items being read or computed now (in batches in flight)
    fresh: int = 0  # items this run did itself, not reused from earlier runs
    todo: int = -1  # items this run has to do itself (-1: not known yet)
    work_started: float = 0.0  # epoch seconds when its first batch went in flight (0: not yet)
    stage: str = "working"  # a key of STAGES
    last_done: float = 0.0  # epoch seconds when items last finished (0: none yet)
    pace: float = 0.0  # items a minute from the ramp's end to the last whole wave's (0: none)
    ramp: int = 0  # items rejected, then of the small first batches and the first full one
    # (a phase that does not ramp: of its first two waves of batches)
    requested: float = 0.0  # the session's own counts: epoch seconds when the user asked
    batch: int = 0  # items a full batch holds (0: not said)
    tail: float | None = None  # at the end: how many batches' time the steady pace overstated
    #: (items done, seconds since work started) as each ramped first batch finished, by
    #: the batches' own items (the rejected ones left out, so sessions compare)
    ramp_marks: tuple[tuple[int, float], ...] = ()
    rejected: int = 0  # of `fresh`: items refused before any batch (no work, no time)
    #: Items done, and when (epoch seconds), as the last whole wave of steady batches ended
    #: (0: none yet): `pace` is counted to it, and the work goes on from it at that pace.
    wave_done: int = 0
    wave_at: float = 0.0
    wave: int = 0  # batches in flight together (0: not said)
    #: When each stage before the work began (stage, epoch seconds), in order: milestones
    #: that cut a session's start-up (`api.weights.startup_milestones`).
    stage_at: tuple[tuple[str, float], ...] = ()
    #: Items this run looked in for the next phase's work, and the work it found there
    #: (the embed phase: the photos the faces phase will do, and the faces in them).
    looked: int = 0
    found: int = 0

    @property
    def percentage(self) -> float:
        if self.done:
            return 100.0
        if self.total <= 0:
            return 0.0
        return min(100.0, 100.0 * self.current / self.total)

    def describe(self) -> str:
        """The artifact description: `key=value` pairs a person and a parser can both read."""
        return (
            f"current={self.current} total={self.total} skipped={self.skipped} "
            f"failed={self.failed} per_minute={self.per_minute:.1f} done={int(self.done)} "
            f"active={self.active} fresh={self.fresh} todo={self.todo} "
            f"work_started={self.work_started:.3f} stage={self.stage} "
            f"last_done={self.last_done:.3f} pace={self.pace:.2f} ramp={self.ramp} "
            f"requested={self.requested:.3f} batch={self.batch}"
            + ("" if self.tail is None else f" tail={self.tail:.3f}")
            + _marks_text("ramp_marks", self.ramp_marks)
            + ("" if not self.rejected else f" rejected={self.rejected}")
            + ("" if not self.wave_at
               else f" wave_done={self.wave_done} wave_at={self.wave_at:.3f}")
            + ("" if not self.looked else f" looked={self.looked} found={self.found}")
            + ("" if not self.wave else f" wave={self.wave}")
            + _marks_text("stage_at", self.stage_at)
        )  # fmt: skip

    @classmethod
    def parse(cls, description: str | None) -> Counts | None:
        """Read counts back from an artifact description; None when it carries none."""
        if not description:
            return None
        pairs = dict(part.split("=", 1) for part in description.split() if "=" in part)
        try:
            return cls(
                current=int(pairs["current"]),
                total=int(pairs["total"]),
                skipped=int(pairs.get("skipped", 0)),
                failed=int(pairs.get("failed", 0)),
                per_minute=float(pairs.get("per_minute", 0.0)),
                done=pairs.get("done", "0") == "1",
                active=int(pairs.get("active", 0)),
                fresh=int(pairs.get("fresh", 0)),
                todo=int(pairs.get("todo", -1)),
                work_started=float(pairs.get("work_started", 0.0)),
                stage=pairs.get("stage", "working") if pairs.get("stage") in STAGES else "working",
                last_done=float(pairs.get("last_done", 0.0)),
                pace=float(pairs.get("pace", 0.0)),
                ramp=int(pairs.get("ramp", 0)),
                requested=float(pairs.get("requested", 0.0)),
                batch=int(pairs.get("batch", 0)),
                tail=float(pairs["tail"]) if "tail" in pairs else None,
                ramp_marks=tuple((int(n), s) for n, s in _marks(pairs.get("ramp_marks", ""))),
                rejected=int(pairs.get("rejected", 0)),
                wave_done=int(pairs.get("wave_done", 0)),
                wave_at=float(pairs.get("wave_at", 0.0)),
                looked=int(pairs.get("looked", 0)),
                found=int(pairs.get("found", 0)),
                wave=int(pairs.get("wave", 0)),
                stage_at=tuple((stage, at) for stage, at in _marks(pairs.get("stage_at", ""))
                               if stage in STAGES),  # unknown stages left out
            )
        except (KeyError, ValueError):
            return None


def _marks_text(key: str, marks: Sequence[tuple[object, float]]) -> str:
    """` key=a:s,a:s` for marks of (what, seconds) in a description (`Counts.ramp_marks`,
    `Counts.stage_at`); nothing when there are none."""
    return f" {key}=" + ",".join(f"{what}:{s:.3f}" for what, s in marks) if marks else ""


def _marks(text: str) -> list[tuple[str, float]]:
    """The (what, seconds) marks `_marks_text` wrote."""
    return [(what, float(s)) for what, s in (m.split(":", 1) for m in text.split(",") if m)]


#: While a phase works on without finishing items (a long clustering, hashing a big
#: folder), its artifact is re-published this often, so silence means a dead process.
HEARTBEAT_S = 30.0


@dataclass
class ProgressReporter:
    """Publishes a phase's progress artifact, at most once per `interval_s`, and at least
    once per `heartbeat_s` while the phase runs.

    The phase's loop only takes a snapshot of its counts; the reporter's own thread sends
    it to the Prefect API, so no batch waits for an update (10-90 ms each on the 2-core
    machine while a model computes).
    """

    phase: str
    total: int
    interval_s: float = 1.0
    heartbeat_s: float = HEARTBEAT_S
    current: int = 0
    skipped: int = 0
    failed: int = 0
    active: int = 0
    todo: int = -1
    stage: str = "working"
    work_started: float = 0.0
    ramp: int = 0
    batch: int = 0
    #: Batches in flight together. Their ends alternate (one reads while another computes:
    #: 0.3 s, then 1.1 s apart, for embed on 2 cores), so the steady pace is counted over
    #: whole waves of them: counted to each batch, it swung 25 % from one to the next, and
    #: the bar ran 5 points ahead between two. 0: not said (one at a time).
    wave: int = 0
    looked: int = 0  # items looked in for the next phase's work (`Counts.looked`)
    found: int = 0  # the work found there (`Counts.found`)
    _artifact_id: UUID | None = None
    _started: float = field(default_factory=time.monotonic)
    _last_publish: float = 0.0
    _beater: threading.Thread | None = None
    _pending: Counts | None = None  # counts not published yet (the throttle holds them)
    _urgent: bool = False  # publish the pending counts at once, not when the throttle allows
    _wake: threading.Event = field(default_factory=threading.Event)
    _work_done: int = 0
    _first: tuple[float, int] | None = None  # when the first items finished; items done then
    _steady: tuple[float, int] | None = None  # the same when the ramp's items had finished
    _last_done: float = 0.0  # time.monotonic() when items last finished
    _marks: list[tuple[float, int, float]] = field(default_factory=list)
    """(time.monotonic(), items done, steady pace), one for each batch finished after the
    ramp; the time and items of the last whole wave's end, which the pace is counted to."""
    _wave_end: tuple[float, int] | None = None  # the last whole wave of them: when, items done
    _began: float | None = None  # time.monotonic() when the first batch went in flight
    _rejected: int = 0  # items refused before any batch (`reject`)
    _ramp_marks: list[tuple[int, float]] = field(default_factory=list)
    """(items done, seconds since work began) at each ramped batch's end (`Counts.ramp_marks`)."""
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _stage_at: list[tuple[str, float]] = field(default_factory=list)
    """When each stage before the work began (`Counts.stage_at`)."""

    def __post_init__(self) -> None:
        if self.stage != "working":
            self._stage_at.append((self.stage, time.time()))

    def start(self) -> None:
        """Start the reporter's thread, which creates the artifact at 0 (or at what earlier
        runs already did) as its first act, then publishes and beats. The phase goes on
        meanwhile: a warm session's three phases waited 20-30 ms each for the creation."""
        # In the phase's context: the artifact it creates is its run's.
        self._beater = threading.Thread(
            target=contextvars.copy_context().run, args=(self._beat,),
            name=f"{self.phase}-heartbeat", daemon=True,
        )  # fmt: skip
        self._beater.start()

    def stop(self) -> None:
        """Stop the reporter's thread (the phase ended, one way or another) once it has
        published the counts it holds, and wait for it, so nothing it sends lands after
        the phase's last word."""
        self._stop.set()
        self._wake.set()
        beater = self._beater
        if beater is not None and beater is not threading.current_thread():
            beater.join(timeout=30)

    def _beat(self) -> None:
        """Publish the counts the phase posts: at once when urgent, else when the throttle
        allows (results that finish just after a publish show within `interval_s`, not
        with the next batch), and beat while nothing happens."""
        self._create()
        while True:
            since = time.monotonic() - self._last_publish
            with self._lock:
                pending, urgent = self._pending, self._urgent
            if pending is not None and (urgent or since >= self.interval_s or self._stop.is_set()):
                self._send(pending)
                continue
            if self._stop.is_set():
                return
            if since >= self.heartbeat_s:
                with self._lock:
                    beat = self.counts()
                self._send(beat)
                continue
            wait = self.heartbeat_s if pending is None else self.interval_s
            self._wake.wait(max(0.0, min(wait - since, self.heartbeat_s)))
            self._wake.clear()

    def _post(self, urgent: bool = False, done: bool = False) -> None:
        """Hand the current counts to the reporter's thread."""
        with self._lock:
            self._pending = self.counts(done)
            self._urgent = self._urgent or urgent
        self._wake.set()

    def _create(self) -> None:
        self._last_publish = time.monotonic()
        try:
            artifact_id = create_progress_artifact(
                progress=self.counts().percentage,
                key=BY_KEY[self.phase].artifact,
                description=self.counts().describe(),
            )
        except Exception as err:  # the Prefect API is down: the work goes on, we retry later
            logger.warning("progress not published (%s): %s", self.phase, err)
            return
        assert isinstance(artifact_id, UUID)  # the sync call in a sync flow
        self._artifact_id = artifact_id

    def advance(self, processed: int = 0, skipped: int = 0, failed: int = 0) -> None:
        """Count finished items and publish if the throttle allows."""
        n = processed + skipped + failed
        self.current += n
        self.skipped += skipped
        self.failed += failed
        self._work_done += n
        first = self._first is None and n > 0
        if n > 0:
            self._last_done = time.monotonic()
        if first:
            self._first = (self._last_done, self._work_done)
        if n > 0 and self._steady is None and self.ramp and self._began is not None:
            # By the batches' own items: sessions with other numbers of rejects compare.
            done = self._work_done - self._rejected
            self._ramp_marks.append((done, self._last_done - self._began))
        if n > 0 and self._steady is None and self.ramp and self._work_done >= self.ramp:
            self._steady = (self._last_done, self._work_done)
        elif n > 0 and self._steady is not None:
            if (len(self._marks) + 1) % max(1, self.wave) == 0:  # this batch ends a wave
                self._wave_end = (self._last_done, self._work_done)
            paced_to = self._wave_end or (self._last_done, self._work_done)
            self._marks.append((*paced_to, self.pace()))
        # The first results are news (start-up is over): say so now, not a throttle later.
        self._post(urgent=first)

    def reject(self, n: int) -> None:
        """Count items refused before any work (unreadable, unsupported) as skipped: done,
        but not results, so they say nothing of the pace."""
        self.current += n
        self.skipped += n
        self._work_done += n
        self._rejected += n
        self.publish()

    def counts(self, done: bool = False) -> Counts:
        tail = (
            tail_batches(self._marks, self._last_done, self.todo, self.batch, self.wave)
            if done else None
        )  # fmt: skip
        return Counts(
            self.current,
            self.total,
            self.skipped,
            self.failed,
            self.rate(),
            done,
            0 if done else self.active,
            self._work_done,
            self.todo,
            self.work_started,
            "working" if done else self.stage,
            self._epoch(self._last_done),
            self.pace(),
            self.ramp,
            batch=self.batch,
            tail=tail,
            ramp_marks=tuple(self._ramp_marks),
            rejected=self._rejected,
            wave_done=self._wave_end[1] if self._wave_end else 0,
            wave_at=self._epoch(self._wave_end[0]) if self._wave_end else 0.0,
            looked=self.looked,
            found=self.found,
            wave=self.wave,
            stage_at=tuple(self._stage_at),
        )

    @staticmethod
    def _epoch(mono: float) -> float:
        return time.time() - (time.monotonic() - mono) if mono else 0.0

    def pace(self) -> float:
        """Items a minute since the ramped first batches (`ramp` items) had finished, to
        the end of the last whole wave of batches after them (`wave`), or to the last
        finished before the first wave: the steady pace, which says where the work is
        between two batches. From the first finished items until one batch has finished
        after the ramp (the small batches each pay a batch's fixed costs: their pace is
        slower); 0 until two batches have finished."""
        since, until = self._steady, self._wave_end
        if since is None or self._work_done <= since[1]:
            since, until = self._first, None
        if until is None:
            until = (self._last_done, self._work_done)
        if since is None or until[1] <= since[1]:
            return 0.0
        span = until[0] - since[0]
        return 60.0 * (until[1] - since[1]) / span if span > 0 else 0.0

    def set_stage(self, stage: str) -> None:
        """Say what the phase does before its items are in flight, and publish it now."""
        if stage != self.stage and stage != "working":
            self._stage_at.append((stage, time.time()))
        self.stage = stage
        self.publish()

    def begin_work(self) -> None:
        """The first batch is in flight: start-up has ended (the API's clock starts here)."""
        if not self.work_started:
            self.work_started = time.time()
            self._began = time.monotonic()
        self.stage = "working"

    def rate(self) -> float:
        """Items per minute at the pace the work goes now: after the first items finished,
        so that start-up (models loading, the first batch) does not make the ETA too long."""
        now = time.monotonic()
        if (
            self._first is not None
            and now - self._first[0] > 0
            and self._work_done > self._first[1]
        ):
            return 60.0 * (self._work_done - self._first[1]) / (now - self._first[0])
        elapsed = now - self._started
        return 60.0 * self._work_done / elapsed if elapsed > 0 else 0.0

    def publish(self) -> None:
        """Have the current counts published at once (by the reporter's thread)."""
        self._post(urgent=True)

    def _send(self, counts: Counts) -> None:
        """Write counts to the artifact; the ones pending are sent unless newer came since."""
        self._last_publish = time.monotonic()
        with self._lock:
            if self._pending is counts:
                self._pending, self._urgent = None, False
        if self._artifact_id is None:
            self._create()  # Prefect was down when the phase began
            if self._artifact_id is None:
                return
        try:
            update_progress_artifact(
                self._artifact_id, progress=counts.percentage, description=counts.describe()
            )
        except Exception as err:  # a Prefect API outage must not cost the indexing work
            logger.warning("progress not published (%s): %s", self.phase, err)

    def finish(self) -> None:
        """Move the artifact to 100: the phase's last word, sent by its thread as it stops,
        in place of counts the throttle still held (one write less a phase: the Prefect
        server on SQLite refuses a write now and then when writes come together)."""
        self.current = max(self.current, self.total)
        self._post(urgent=True, done=True)
        self.stop()
        with self._lock:
            left = self._pending
        if left is not None:  # no thread sent it (the reporter never started)
            self._send(left)


#: The tail is kept within these bounds (in batches): one odd session must not make a
#: phase's last batches look free, nor twice as slow.
TAIL_BOUNDS = (-1.0, 0.9)

#: The tail is measured on the batches that finished with at least one and fewer than
#: this many full batches still to do: on a long phase, the steady pace drifts, and the
#: batches far from its end would measure the drift instead (0.1 % slower a batch over
#: 1,000 items: -1 for 0.4).
TAIL_WINDOW = 4


def tail_batches(
    marks: list[tuple[float, int, float]], end: float, todo: int, batch: int, wave: int = 1
) -> float | None:
    """How much sooner a phase ended than its steady pace said, in batches' time at that
    pace: the median over the last few batches that finished with a full batch or more
    still to do (`TAIL_WINDOW`; with batches in flight in waves of `wave`, the marks are
    the waves' ends, so as many waves). None when no such batch was measured.

    The last batches are faster than the steady ones (measured: 0.3-0.4 of a batch for
    embed on 2 cores): the batches before them read the next photos while they compute,
    and the last ones compute alone. The API takes this off the time left
    (`api.progress._steady_left`), calibrated from earlier sessions.
    """
    window = 1 + (TAIL_WINDOW - 1) * max(1, wave)
    ratios = [
        (t + (todo - n) * 60.0 / pace - end) / (batch * 60.0 / pace)
        for t, n, pace in marks
        if pace > 0 and batch > 0 and batch <= todo - n < window * batch
    ]
    if not ratios:
        return None
    low, high = TAIL_BOUNDS
    return min(high, max(low, statistics.median(ratios)))


def publish_session(session_id: UUID, counts: Counts | None = None, stage: str = "") -> None:
    """Create a session's own artifact (on its parent run) with `counts`, or move an
    existing one to `stage`, from any process.

    The launcher writes what its fast scan found (photos, new ones) as the session is
    created; the session process updates the stage until its first phase reports.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import ArtifactCreate, ArtifactUpdate
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
    )

    wanted = ArtifactFilter(
        key=ArtifactFilterKey(any_=[SESSION_ARTIFACT]),
        flow_run_id=ArtifactFilterFlowRunId(any_=[session_id]),
    )
    try:
        with get_client(sync_client=True) as client:
            found = client.read_artifacts(artifact_filter=wanted, limit=1)
            if found:
                old = Counts.parse(found[0].description) or Counts(0, 0)
                new = counts or replace(old, stage=stage or old.stage)
                update = ArtifactUpdate(data=new.percentage, description=new.describe())
                client.update_artifact(found[0].id, update)
                return
            if counts is None:
                return  # nothing to say yet: the launcher creates it with the counts
            client.create_artifact(
                ArtifactCreate(
                    key=SESSION_ARTIFACT,
                    type="progress",
                    data=counts.percentage,
                    description=counts.describe(),
                    flow_run_id=session_id,
                )
            )
    except Exception as err:  # the Prefect API is down: the session goes on without it
        logger.warning("session progress not published (%s): %s", session_id, err)
