"""The unified-progress calculation: pure, from a snapshot of Prefect state to the response.

Everything here is arithmetic on plain data; `api.prefect_reader` builds the snapshot.
Every client (REST, CLI) goes through `compute_progress`, so they all agree.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from api.runs import RunState, session_start
from api.schemas import (
    CurrentPhase,
    FaceSessionResponse,
    OverallProgress,
    OverallStatus,
    PhaseName,
    PhaseProgress,
    Phases,
    PhaseStatus,
    ProgressStats,
    TrainingProgressResponse,
    UnifiedProgressResponse,
)
from api.weights import STARTUP_STAGES, Timeline, Weights, startup_milestones, weights_schema
from photoindex.phases import BY_CONTRACT, CONTRACT_KEYS, SEED_WEIGHTS
from tasks.progress import STAGES, Counts

logger = logging.getLogger(__name__)

PHASES = CONTRACT_KEYS
"""The phases in order, by their contract keys; the first one also carries start-up."""
FIRST = PHASES[0]
PHASE_NAMES: dict[str, PhaseName] = {p.contract: p.name for p in BY_CONTRACT.values()}
PHASE_LABELS = {p.contract: p.label for p in BY_CONTRACT.values()}
SLOW_FACTOR = 1.5
SLOW_MIN_EXTRA_S = 30.0
"""A phase projected to take SLOW_FACTOR times its calibrated duration, and at least
SLOW_MIN_EXTRA_S seconds longer, gets a warning."""

# Prefect state types, as plain strings so this module needs no Prefect import.
SCHEDULED, PENDING, RUNNING, COMPLETED = "SCHEDULED", "PENDING", "RUNNING", "COMPLETED"
FAILED, CRASHED, CANCELLED, CANCELLING, PAUSED = (
    "FAILED",
    "CRASHED",
    "CANCELLED",
    "CANCELLING",
    "PAUSED",
)
FINAL_STATES = {COMPLETED, FAILED, CRASHED, CANCELLED}
_DONE: set[str] = {"completed", "skipped"}
_ENDED: set[str] = {"completed", "skipped", "failed", "cancelled"}


@dataclass(frozen=True)
class PhaseSnapshot:
    """One phase: its subflow run (None before it starts) and its progress artifact."""

    run: RunState | None = None
    counts: Counts | None = None
    artifact_updated: datetime | None = None


@dataclass(frozen=True)
class SessionSnapshot:
    """Everything the calculation needs about one session, read at `now`."""

    session_id: UUID
    parent: RunState
    faces: bool
    phases: Mapping[str, PhaseSnapshot]
    now: datetime
    stall_after_s: float = 120.0
    fail_after_s: float = 900.0
    """A running session silent this long has lost its process: it is reported failed."""
    folder: str | None = None
    pause_requested: bool = False
    cancel_requested: bool = False
    floor_percentage: float = 0.0
    """The highest percentage reported earlier for this session; never go below it."""
    session: Counts | None = None
    """The session's own artifact: the launcher's fast count of photos, and the stage."""
    launch: str = ""
    """How the session was started (warm, cold, deployment): start-up costs differ."""

    def phase(self, key: str) -> PhaseSnapshot:
        return self.phases.get(key) or PhaseSnapshot()


def _phase_status(
    key: str, snap: SessionSnapshot, parent_dead: bool
) -> tuple[PhaseStatus, float | None]:
    """A phase's status, and how long it has been silent if Prefect says it is running."""
    if BY_CONTRACT[key].needs_faces and not snap.faces:
        return "skipped", None
    run = snap.phase(key).run
    if run is None:
        if snap.parent.state_type in {CANCELLED, CANCELLING}:
            return "cancelled", None
        if snap.parent.state_type in FINAL_STATES or parent_dead:
            return "skipped", None
        return "pending", None
    state = run.state_type
    if state == RUNNING:
        artifact_time = snap.phase(key).artifact_updated
        silence = _silence(snap.now, run.start_time, run.state_time, artifact_time)
        if silence is not None and silence > snap.fail_after_s:
            return "failed", silence
        if silence is not None and silence > snap.stall_after_s:
            return "stalled", silence
        return BY_CONTRACT[key].running_status, silence
    mapping: dict[str, PhaseStatus] = {
        SCHEDULED: "pending",
        PENDING: "pending",
        PAUSED: "paused",
        COMPLETED: "completed",
        FAILED: "failed",
        CRASHED: "failed",
        CANCELLED: "cancelled",
        CANCELLING: "cancelling",
    }
    return mapping.get(state, "pending"), None


def _silence(now: datetime, *signs: datetime | None) -> float | None:
    known = [s for s in signs if s is not None]
    if not known:
        return None
    return (now - max(known)).total_seconds()


def _stats(
    key: str, status: PhaseStatus, snap: SessionSnapshot, weights: Weights
) -> ProgressStats:
    phase = snap.phase(key)
    counts = phase.counts
    if counts is not None:
        current, total = counts.current, counts.total
        percentage = counts.percentage
        if status in {"running", "processing"}:
            percentage = max(percentage, _in_flight_share(key, snap, weights, counts))
    else:
        images = snap.phase(FIRST).counts
        if BY_CONTRACT[key].units == "library":
            total = 1
        elif key != FIRST and images is not None:
            total = images.total
        else:
            total = 0
        current, percentage = 0, 0.0
    if status == "completed":
        percentage = 100.0
        current = max(current, total)
    rate = counts.per_minute if counts is not None and counts.per_minute > 0 else None
    return ProgressStats(
        current=current,
        total=total,
        percentage=round(min(100.0, max(0.0, percentage)), 2),
        eta_seconds=None,
        images_per_minute=round(rate, 1) if rate is not None else None,
        skipped=counts.skipped if counts is not None else 0,
        failed=counts.failed if counts is not None else 0,
    )


def _in_flight_share(key: str, snap: SessionSnapshot, weights: Weights, counts: Counts) -> float:
    """How far a running phase is by the clock, never past the items finished or in flight.

    Items count when written, a batch at a time, and the first batch also waits for the
    models to load: by counts alone a phase sits at 0 % for its first seconds. With this
    phase's calibrated seconds per image, the time since it started says how far the work
    has come, capped at the items actually finished or being worked on.
    """
    spi = weights.seconds_per_image.get(key)
    run = snap.phase(key).run
    images = snap.phase(FIRST).counts
    if not spi or run is None or run.start_time is None or images is None or counts.total <= 0:
        return 0.0
    expected = spi * images.total
    by_clock = 100.0 * (snap.now - run.start_time).total_seconds() / expected
    in_flight = 100.0 * (counts.current + counts.active) / counts.total
    return max(0.0, min(by_clock, in_flight, 100.0))


def _overall_status(
    snap: SessionSnapshot, statuses: Mapping[str, PhaseStatus], parent_silence: float | None
) -> OverallStatus:
    parent = snap.parent.state_type
    values = set(statuses.values())
    if parent == COMPLETED and values <= _DONE:
        return "completed"
    if "failed" in values or parent in {FAILED, CRASHED}:
        return "failed"
    if parent_silence is not None and parent_silence > snap.fail_after_s:
        return "failed"
    if parent == CANCELLED:
        return "cancelled"
    if "cancelling" in values or parent == CANCELLING:
        return "cancelling"
    if snap.cancel_requested and parent not in FINAL_STATES:
        return "cancelling"
    if "cancelled" in values:
        return "cancelled"
    if "paused" in values or parent == PAUSED:
        return "paused"
    if "stalled" in values:
        return "stalled"
    if parent_silence is not None and parent_silence > snap.stall_after_s:
        return "stalled"
    if parent in {SCHEDULED, PENDING} and values <= {"pending", "skipped"}:
        return "pending"
    return "running"


def _current_phase(statuses: Mapping[str, PhaseStatus], overall: OverallStatus) -> CurrentPhase:
    if overall == "completed":
        return "completed"
    for key in PHASES:
        if statuses[key] not in _DONE:
            return PHASE_NAMES[key]
    return "completed"


def _parent_silence(snap: SessionSnapshot) -> float | None:
    """Silence of a running session between phases, when no phase run is running or paused."""
    if snap.parent.state_type != RUNNING:
        return None
    runs = [snap.phase(k).run for k in PHASES if snap.faces or not BY_CONTRACT[k].needs_faces]
    if any(run is not None and run.state_type in {RUNNING, PAUSED} for run in runs):
        return None
    signs: list[datetime | None] = [snap.parent.start_time, snap.parent.state_time]
    for key in PHASES:
        phase = snap.phase(key)
        signs.append(phase.artifact_updated)
        if phase.run is not None:
            signs.extend((phase.run.end_time, phase.run.state_time))
    return _silence(snap.now, *signs)


def _seconds_per_item(phase: PhaseSnapshot) -> float | None:
    """This session's measured seconds per item of a phase, from its rate or its duration."""
    counts = phase.counts
    if counts is None:
        return None
    if counts.per_minute > 0:
        return 60.0 / counts.per_minute
    duration = phase.run.duration_s if phase.run is not None else None
    if duration and counts.total > 0:
        return duration / counts.total
    return None


def _eta(
    snap: SessionSnapshot,
    weights: Weights,
    statuses: Mapping[str, PhaseStatus],
    stats: dict[str, ProgressStats],
    warnings: list[str],
) -> int | None:
    """Seconds until every phase is done: measured rate now, calibrated or seed costs later."""
    images = snap.phase(FIRST).counts
    n_images = images.total if images is not None else None
    remaining: list[float | None] = []
    anchor: tuple[str, float] | None = None  # a phase of this session with a measured cost
    for key in PHASES:
        status = statuses[key]
        phase = snap.phase(key)
        if status in _DONE:
            spi = _seconds_per_item(phase)
            if status == "completed" and spi is not None and BY_CONTRACT[key].units == "photos":
                anchor = (key, spi)
            continue
        if status in {"running", "processing"} and phase.counts is not None:
            counts = phase.counts
            if counts.per_minute > 0:
                left = max(0, counts.total - counts.current) * 60.0 / counts.per_minute
                stats[key].eta_seconds = int(round(left))
                remaining.append(left)
                if BY_CONTRACT[key].units == "photos":
                    anchor = (key, 60.0 / counts.per_minute)
                _warn_if_slow(key, counts, weights, n_images, warnings)
                continue
            remaining.append(None)
            continue
        # A phase still to come.
        estimate: float | None = None
        if n_images is not None and key in weights.seconds_per_image:
            estimate = weights.seconds_per_image[key] * n_images
        elif n_images is not None and anchor is not None:
            anchor_key, spi = anchor
            estimate = spi * n_images * SEED_WEIGHTS[key] / SEED_WEIGHTS[anchor_key]
        if estimate is not None:
            stats[key].eta_seconds = int(round(estimate))
        remaining.append(estimate)
    if not remaining or any(r is None for r in remaining):
        return None
    return int(round(sum(r for r in remaining if r is not None)))


def _warn_if_slow(
    key: str, counts: Counts, weights: Weights, n_images: int | None, warnings: list[str]
) -> None:
    """Warn when a phase runs clearly slower than its history of seconds per image."""
    spi = weights.seconds_per_image.get(key)
    if spi is None or not n_images or counts.total <= 0 or counts.per_minute <= 0:
        return
    if counts.current < max(5, counts.total // 20):
        return
    projected = counts.total * 60.0 / counts.per_minute
    expected = spi * n_images
    slow = projected > SLOW_FACTOR * expected and projected - expected > SLOW_MIN_EXTRA_S
    if expected > 0 and slow:
        warnings.append(
            f"{PHASE_LABELS[key]} is running {projected / expected:.1f}x slower than in "
            f"recent sessions (about {_secs(projected)} for this phase instead of "
            f"{_secs(expected)})."
        )


def _secs(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"


@dataclass(frozen=True)
class _Timed:
    """Progress by the measured timeline: each phase's fraction, share and time left."""

    fractions: Mapping[str, float]
    shares: Mapping[str, float]
    eta_s: float | None


def _units(key: str, snap: SessionSnapshot) -> int | None:
    """A phase's units of work: photos to do for embed and faces, library photos for
    clustering; from the phase's own counts, else from earlier ones or the fast scan."""
    first, session = snap.phase(FIRST).counts, snap.session
    own = snap.phase(key).counts
    if BY_CONTRACT[key].units == "library":
        if first is not None and first.total > 0:
            return first.total
        return session.total if session is not None else None
    if own is not None and own.todo >= 0:
        return own.todo
    if key != FIRST:  # not started: as many new photos as the phase before it had
        return _units(PHASES[PHASES.index(key) - 1], snap)
    return session.todo if session is not None and session.todo >= 0 else None


def _segment_start(key: str, snap: SessionSnapshot) -> datetime | None:
    """When a phase's part of the timeline began: the session's start for the first,
    the end of the phase before it for the others."""
    if key == FIRST:
        return session_start(snap.parent.created or snap.parent.start_time, snap.session)
    before = PHASES[PHASES.index(key) - 1]
    run = snap.phase(before).run
    return run.end_time if run is not None else None


def _timed(
    snap: SessionSnapshot, timeline: Timeline, statuses: Mapping[str, PhaseStatus]
) -> _Timed | None:
    """Progress by the clock along the calibrated timeline, never past the work counted
    (finished or in flight); None while the photo count is not known yet.

    What has happened is taken as measured, not as calibrated: a finished phase counts its
    real duration, and a phase at work its real start-up or overhead; only what is still
    to come follows the calibrated costs.
    """
    expected: dict[str, float] = {}
    fractions: dict[str, float] = {}
    left: dict[str, float] = {}
    for key in PHASES:
        if statuses[key] == "skipped" and BY_CONTRACT[key].needs_faces and not snap.faces:
            expected[key], fractions[key], left[key] = 0.0, 1.0, 0.0
            continue
        units = _units(key, snap)
        if units is None:
            return None
        counts, start = snap.phase(key).counts, _segment_start(key, snap)
        overhead = (
            _startup(snap, timeline, start) if key == FIRST
            else timeline.overhead_s.get(key, 0.0)
        )  # fmt: skip
        if start is not None and counts is not None and counts.work_started > 0:
            overhead = max(0.0, counts.work_started - start.timestamp())  # measured by now
        # The calibrated work and the ramp's marks, as long as this session's finds say
        scale = _found_scale(key, snap, timeline)
        work = timeline.per_unit_s.get(key, 0.0) * units * scale
        ramp = {n: s * scale for n, s in timeline.ramp_s.get(key, {}).items()}
        speed = 1.0
        if counts is not None and statuses[key] not in _DONE:
            speed = _ramp_speed(counts, ramp)
            work /= speed
        total = max(overhead + work, 1e-6)
        run = snap.phase(key).run
        if statuses[key] in _DONE and start is not None and run and run.end_time:
            total = max((run.end_time - start).total_seconds(), 1e-6)  # as it was
        expected[key] = total
        if statuses[key] in _DONE:
            fractions[key], left[key] = 1.0, 0.0
        elif start is None:
            fractions[key], left[key] = 0.0, total
        elif counts is not None and counts.work_started > 0:
            # In time, not in photos: what it has taken so far and what is left. The first,
            # ramped batches cost more a photo than the steady ones, so a share of photos
            # would lag the clock.
            now = snap.now.timestamp()
            pace = _steady_pace(counts)
            left[key] = (
                _steady_left(counts, _position(counts, pace, now), pace,
                             timeline.tail_batches.get(key, 0.0))
                if pace > 0 else _calibrated_left(counts, work, now, ramp, speed)
            )  # fmt: skip
            worked = overhead + max(0.0, now - counts.work_started)
            expected[key] = max(worked + left[key], 1e-6)
            fractions[key] = worked / expected[key]
        else:
            elapsed = max(0.0, (snap.now - start).total_seconds())
            fractions[key] = min(elapsed, overhead) / total
            left[key] = max(0.0, overhead - elapsed) + work
    whole = sum(expected.values()) or 1.0
    shares = {key: expected[key] / whole for key in PHASES}
    return _Timed(fractions, shares, sum(left.values()))


#: Photos' worth of the calibrating sessions' rate a session's own finds are weighed
#: against (`_found_scale`): faces a photo vary a lot from one photo to the next, so the
#: first few photos say little, and 121 of them say most of it.
FOUND_PRIOR_ITEMS = 32
#: The share of the faces phase's cost a photo that its faces make: 9.7 ms a face against
#: 5.9 ms a photo besides (its entry read, its rows, a batch's writes), fitted on sets A
#: and B (77 faces in 120 photos, 92 in 121): the phase's medians over 22
#: `bench_warm_start` runs, 1.46 and 1.61 s (0.4 came from the first ten).
FOUND_SHARE = 0.5
#: The scale is kept within these: a photo crowded with faces is no reason to expect
#: several times the calibrated cost.
FOUND_SCALE_BOUNDS = (0.5, 2.0)


def _found_scale(key: str, snap: SessionSnapshot, timeline: Timeline) -> float:
    """How much more work a photo holds for a phase whose work an earlier phase finds
    (`PhaseSpec.found_by`: faces) in this session than in the ones that calibrated it.

    Its cost a photo is calibrated on sessions that found `Timeline.found_rate` faces a
    photo; warm B's photos held 92 faces for 121 photos against set A's 77 for 120, and
    its faces phase took 8 % longer (median of ten runs; 25 % in one). The rate found so
    far is weighed against the calibrated one as `FOUND_PRIOR_ITEMS` photos, so the first
    photos move it little; it scales the faces' share of the cost (`FOUND_SHARE`), and the
    scale is kept within `FOUND_SCALE_BOUNDS`."""
    finder, calibrated = BY_CONTRACT[key].found_by, timeline.found_rate.get(key, 0.0)
    counts = snap.phase(finder).counts if finder else None
    if counts is None or calibrated <= 0:
        return 1.0
    prior = FOUND_PRIOR_ITEMS
    rate = (counts.found + calibrated * prior) / (counts.looked + prior)
    scale = 1.0 + FOUND_SHARE * (rate / calibrated - 1.0)
    low, high = FOUND_SCALE_BOUNDS
    return min(high, max(low, scale))


def _startup(snap: SessionSnapshot, timeline: Timeline, start: datetime | None) -> float:
    """The session's start-up as it stands: measured up to the last milestone it reached
    (its run Running, its first phase's run started, its scan, its model load:
    `startup_milestones`), calibrated from there on. A first
    process after a reboot imports from a cold page cache, and pays it in every part: a
    session that reaches a milestone early or late is not held to the calibrated sum."""
    parts, _ = timeline.startup(snap.launch)
    expected = sum(parts)
    if start is None:
        return expected
    milestones = startup_milestones(
        snap.parent.start_time, _run(snap, FIRST).start_time, snap.phase(FIRST).counts
    )
    stages_from = len(milestones) - len(STARTUP_STAGES)
    for reached, when in enumerate(milestones):
        if when is None:
            break
        if reached >= stages_from and parts[reached] <= 0.0:
            break  # the calibrating sessions did not say when they reached it (older ones)
        expected = max(0.0, when - start.timestamp()) + sum(parts[reached + 1 :])
    return expected


#: A ramp mark tells this session's speed once earlier sessions took this long to reach
#: it: before, the first batches' fixed costs and the first result's wait are most of it.
RAMP_SPEED_MIN_S = 1.0
#: This session's speed against earlier ones, as its ramp tells it, is kept within these:
#: other photos change it by 5-10 %, and a ramp held up once (a stall of 1.9 s was seen
#: while another process took the cores) must not make the rest look half as fast.
RAMP_SPEED_BOUNDS = (0.8, 1.25)


def _ramp_speed(counts: Counts, calibrated: Mapping[int, float]) -> float:
    """How much faster (above 1) or slower a phase goes than the sessions that calibrated
    it: the median over its ramped batches of their time against earlier sessions' at the
    same items done (within `RAMP_SPEED_BOUNDS`); 1 when nothing comparable was measured.

    The calibrated cost a photo is an average over earlier sessions' photos, and this
    session's may be bigger or smaller: a 10-second session of other photos ran 5-8 %
    faster than its calibration, and its ETA was that much too long until its own steady
    pace was known (`_steady_pace`), a third of the phase in.
    """
    ratios = [
        calibrated[items] / seconds
        for items, seconds in counts.ramp_marks
        if calibrated.get(items, 0.0) >= RAMP_SPEED_MIN_S and seconds > 0
    ]
    if not ratios:
        return 1.0
    low, high = RAMP_SPEED_BOUNDS
    return min(high, max(low, statistics.median(ratios)))


def _steady_pace(counts: Counts) -> float:
    """The phase's measured pace (items a minute) once it says something, else 0.

    The first batches are ramped (1, 2, 4, ... items, `tasks.phase.ramped_chunks`) and each
    pays a batch's fixed costs, so their pace is too slow; the calibrated one is better
    until the phase has done the items of its ramp (`Counts.ramp`, the phase says how many)
    and a whole wave of batches more (the batches in flight together, at least two), over
    which the reporter measures the pace without the ramp. Not one batch: with two in
    flight, batches finish at alternating intervals (one reads while the other computes;
    measured 0.8 and 1.1 s for embed in bfloat16), so one batch's pace was 10-20 % off,
    and the bar jumped 5 points when it came.
    """
    batches = max(2, counts.wave)
    trusted = counts.ramp + (batches * counts.batch if counts.batch > 0 else 1)
    return counts.pace if counts.pace > 0 and counts.fresh >= trusted else 0.0


def _steady_left(counts: Counts, position: float, pace: float, tail: float) -> float:
    """Seconds left to a phase at its steady pace (items a minute), less what its last
    batches gain on that pace: `tail` of a batch's time, calibrated from earlier sessions
    (`tasks.progress.tail_batches`), and less of it once under a batch is unfinished.

    The gain is the last batch's share of it, the same from the first steady batch to
    the end, so the time left counts down with the clock: counted on `position`, which
    moves on between batches, it shrank while the last batch computed; counted on a full
    batch while the last one is smaller (most sessions: the ramp's 31, then 16 at a
    time), it fell away when the last one started, and the time left ran to 0 early,
    then jumped back up.
    """
    todo = max(1, counts.todo)
    items = max(0.0, todo - position)
    last = ((todo - counts.ramp) % counts.batch or counts.batch) if counts.batch > 0 else 0
    gain = tail * min(max(0, todo - counts.fresh), last)  # nothing without a batch size
    return max(0.0, (items - gain) * 60.0 / pace)


def _position(counts: Counts, pace: float, now: float) -> float:
    """How many of a running phase's items are done by now at its steady pace (items a
    minute), in fractions of an item: from the end of the last whole wave of batches the
    pace is counted to (or the last finished), at that pace. Never past the items
    finished or in flight.

    Batches in flight together end at alternating intervals; going on from the batch that
    ended just after another, the bar ran 5 points ahead until the next one came."""
    done, since = (
        (counts.wave_done, counts.wave_at) if counts.wave_at > 0
        else (counts.fresh, counts.last_done)
    )  # fmt: skip
    guess = done + pace / 60.0 * max(0.0, now - since)
    return _within_flight(counts, guess)


def _within_flight(counts: Counts, guess: float) -> float:
    """Items done, as guessed, but no fewer than finished and no more than in flight."""
    ceiling = min(max(1, counts.todo), counts.fresh + counts.active)
    return max(float(min(counts.fresh, max(1, counts.todo))), min(guess, ceiling))


def _calibrated_left(
    counts: Counts, work_s: float, now: float, ramp: Mapping[int, float], speed: float
) -> float:
    """Seconds left to a running phase whose steady pace is not known yet, along its
    calibrated timeline: `work_s` in all (at this session's `speed`), of which earlier
    sessions had spent `ramp[n]` when n items were done.

    The first, ramped batches cost more a photo than the rest (each pays a batch's fixed
    costs), so the time left is counted from the last ramp mark both this session and
    earlier ones reached, not as the photos' share of the whole: that share left the
    photos after the ramp their average cost, and a 10-second warm session's ETA ran
    10-20 % long (and its bar 2-4 points behind) until its own pace was known. Past the
    mark, the items go at the calibrated rate of the rest, between batches by the clock.

    A mark counts the batches' own items; the files rejected before any batch are done
    at no cost from the start, so they are added to it (and are the anchor without one).
    """
    todo = max(1, counts.todo)
    rejected = counts.rejected
    marks = [
        (rejected + n, ramp[n] / speed)
        for n, _ in counts.ramp_marks
        if n in ramp and rejected + n < todo
    ]
    items, spent = max(marks) if marks else (rejected, 0.0)
    if spent >= work_s:  # the earlier sessions' ramp was most of their work: no anchor
        items, spent = rejected, 0.0
    rest = work_s - spent
    if rest <= 0 or items >= todo:
        return 0.0
    rate = (todo - items) / rest  # items a second from the mark on
    since = counts.last_done if counts.last_done > 0 else counts.work_started
    position = _within_flight(counts, counts.fresh + rate * max(0.0, now - since))
    return max(0.0, rest - (position - items) / rate)


def _stage_message(snap: SessionSnapshot) -> str | None:
    """What the session does before its first photos are in flight, in words."""
    counts = snap.phase(FIRST).counts
    if counts is not None:
        return STAGES.get(counts.stage) or None
    if snap.session is not None:
        if snap.parent.state_type not in {SCHEDULED, PENDING} and snap.session.stage == "queued":
            return STAGES["starting"]  # claimed by a warm indexer, which says no more
        return STAGES.get(snap.session.stage) or None
    return None


def compute_progress(snap: SessionSnapshot, weights: Weights) -> UnifiedProgressResponse:
    """The unified progress of a session: statuses, weighted percentage, ETA and warnings."""
    warnings: list[str] = []
    parent_silence = _parent_silence(snap)
    parent_dead = parent_silence is not None and parent_silence > snap.fail_after_s
    statuses: dict[str, PhaseStatus] = {}
    messages: dict[str, str] = {}
    lost: set[str] = set()
    for key in PHASES:
        status, silence = _phase_status(key, snap, parent_dead)
        statuses[key] = status
        run = snap.phase(key).run
        if status == "stalled" and silence is not None:
            warnings.append(
                f"{PHASE_LABELS[key]} has reported nothing for {silence:.0f} s (more than "
                f"{snap.stall_after_s:.0f} s): its process may have been killed, although "
                "Prefect still shows the run as Running."
            )
        elif status == "failed" and silence is not None:
            messages[key] = _lost_message(snap, f"{PHASE_LABELS[key]} has", silence)
            lost.add(key)
            warnings.append(messages[key])
        elif status == "failed" and run is not None and run.message:
            messages[key] = run.message
            warnings.append(f"{PHASE_LABELS[key]} failed: {run.message}")
    if lost:
        # The session's process is gone: phases that never started will not, as when it fails.
        statuses.update({k: "skipped" for k in PHASES if snap.phase(k).run is None})
    overall_status = _overall_status(snap, statuses, parent_silence)
    if parent_dead and parent_silence is not None:
        warnings.append(_lost_message(snap, "The session has", parent_silence, between=True))
    elif overall_status == "stalled" and parent_silence is not None:
        warnings.append(
            f"The session has reported nothing for {parent_silence:.0f} s (more than "
            f"{snap.stall_after_s:.0f} s) between phases: its process may have been killed."
        )
    if snap.pause_requested and overall_status == "running":
        warnings.append("Pause requested: the session pauses at its next checkpoint.")
    if (
        overall_status == "failed"
        and snap.parent.state_type in {FAILED, CRASHED}
        and snap.parent.message
        and not messages
    ):
        warnings.append(f"The session failed: {snap.parent.message}")

    stats = {key: _stats(key, statuses[key], snap, weights) for key in PHASES}
    timed = (
        _timed(snap, weights.timeline, statuses) if weights.timeline is not None else None
    )
    shares = weights.shares
    if timed is not None:
        shares = timed.shares
        for key in PHASES:
            if statuses[key] not in {"failed", "cancelled"}:
                stats[key].percentage = round(100.0 * min(1.0, timed.fractions[key]), 2)
        if statuses[FIRST] not in {"failed", "cancelled", "completed"}:
            stage = _stage_message(snap)
            if stage:
                messages.setdefault(FIRST, stage)
    raw = sum(shares[key] * stats[key].percentage for key in PHASES)
    if overall_status == "completed":
        percentage = 100.0
    else:
        percentage = min(round(raw, 2), 99.99)
        percentage = max(percentage, min(snap.floor_percentage, 99.99))
    live = overall_status in {"running", "pending"}
    if timed is not None and timed.eta_s is not None and live:
        eta: int | None = int(round(timed.eta_s))
    else:
        running = overall_status == "running"
        eta = _eta(snap, weights, statuses, stats, warnings) if running else None
    if overall_status == "completed":
        eta = 0

    phases = {
        key: PhaseProgress(
            name=PHASE_NAMES[key],
            status=statuses[key],
            progress=stats[key],
            started_at=_run(snap, key).start_time,
            completed_at=_run(snap, key).end_time if statuses[key] in _ENDED else None,
            message=messages.get(key),
        )
        for key in PHASES
    }
    stamps = [snap.parent.state_time, snap.parent.start_time]
    for key in PHASES:
        stamps.append(snap.phase(key).artifact_updated)
        stamps.append(_run(snap, key).state_time)
    known = [s for s in stamps if s is not None]
    response = UnifiedProgressResponse(
        session_id=snap.session_id,
        overall_status=overall_status,
        overall_progress=OverallProgress(
            percentage=percentage,
            eta_seconds=eta,
            current_phase=_current_phase(statuses, overall_status),
        ),
        phases=Phases.model_validate(phases),
        weights=weights_schema(shares),
        weights_source=weights.source,
        warnings=warnings,
        updated_at=max(known) if known else None,
    )
    logger.debug(
        "Unified progress calculated for session %s: overall=%.1f%%, %s, status=%s, eta=%s, "
        "weights=%s",
        snap.session_id,
        percentage,
        ", ".join(f"{key}={stats[key].percentage:.1f}%" for key in PHASES),
        overall_status,
        eta,
        weights.source,
    )
    return response


def time_left_s(
    snap: SessionSnapshot, weights: Weights, response: UnifiedProgressResponse
) -> float | None:
    """The time left behind `response` (computed from `snap`), before the contract's
    `etaSeconds` rounds it to whole seconds; None where the ETA does not come from the
    calibrated timeline. For benchmarks: on a 9-second session the rounding alone is
    5-7 % of the time left."""
    live = response.overall_status in {"running", "pending"}
    if weights.timeline is None or not live:
        return None
    statuses: dict[str, PhaseStatus] = {
        key: getattr(response.phases, key).status for key in PHASES
    }
    timed = _timed(snap, weights.timeline, statuses)
    return None if timed is None else timed.eta_s


def _lost_message(snap: SessionSnapshot, who: str, silence: float, between: bool = False) -> str:
    """Why a session still Running in Prefect is reported failed, and how to finish it."""
    where = " between phases" if between else ""
    folder = f" ({snap.folder}, e.g. `photoindex index {snap.folder}`)" if snap.folder else ""
    return (
        f"{who} reported nothing for {silence:.0f} s{where} (more than "
        f"{snap.fail_after_s:.0f} s), although Prefect still shows it Running: its process "
        "probably died (killed, out of memory, or the machine restarted). Re-run the same "
        f"folder{folder} to finish: photos already indexed are kept and not redone."
    )


def _run(snap: SessionSnapshot, key: str) -> RunState:
    return snap.phase(key).run or RunState(state_type=PENDING)


def training_progress(unified: UnifiedProgressResponse) -> TrainingProgressResponse:
    """The older phase-1-only view of a unified progress."""
    training = unified.phases.training
    return TrainingProgressResponse(
        session_id=unified.session_id,
        status=training.status,
        progress=training.progress,
        started_at=training.started_at,
        completed_at=training.completed_at,
    )


def face_session(unified: UnifiedProgressResponse) -> FaceSessionResponse:
    """Face detection and clustering of a unified progress, combined into one."""
    faces, clusters = unified.phases.faceDetection, unified.phases.clustering
    pair = {faces.status, clusters.status}
    status: PhaseStatus
    if pair <= {"skipped"}:
        status = "skipped"
    elif pair <= _DONE:
        status = "completed"
    else:
        order: tuple[PhaseStatus, ...] = (
            "failed", "cancelled", "cancelling", "stalled", "paused", "running", "processing",
        )
        status = next((s for s in order if s in pair), "pending")
        if status == "running":
            status = "processing"
        if status == "pending" and faces.status == "completed":
            status = "processing"
    return FaceSessionResponse(
        session_id=unified.session_id,
        status=status,
        progress=faces.progress,
        face_detection=faces,
        clustering=clusters,
        started_at=faces.started_at,
        completed_at=clusters.completed_at if status in _ENDED else None,
    )
