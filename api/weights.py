"""Session weights: what finished sessions measured, as shares and a timeline.

A session's weights are fixed when it starts, from the sessions that finished before:
seconds per image of each phase, and the timeline of its parts (start-up per launch
route, each later phase's overhead, and its cost per unit of work). Pure: the caller
fetches the finished sessions (`api.prefect_reader`).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from prefect.client.schemas.objects import FlowRun

from api.runs import Phases, counts_of, run_state, session_start, utc
from api.schemas import PhaseWeights
from photoindex.launch import launch_route
from photoindex.phases import BY_CONTRACT, SEED_WEIGHTS
from photoindex.phases import CONTRACT_KEYS as PHASES
from tasks.progress import Counts

FIRST = PHASES[0]
CALIBRATION_SESSIONS = 5
"""How many recent completed sessions calibrate a new session's weights."""
MIN_FRESH_SHARE = 0.5
"""A session calibrates only if at least this share of its images was new work, not reused."""


StartupParts = tuple[float, ...]
"""A start-up in seconds, cut at the milestones a session reaches after the user asked
(`startup_milestones`): to its run going Running (the process started and claimed it),
to its first phase's run starting (the parent flow set up), to that phase's scan
starting (the phase's imports done), to its model loading (the photos found and hashed),
then to its first batch in flight."""

#: The first phase's stages before its work that cut a start-up, in order (`Counts.stage_at`).
STARTUP_STAGES = ("scanning", "loading")


def startup_milestones(
    running: datetime | None, first_phase: datetime | None, counts: Counts | None
) -> tuple[float | None, ...]:
    """The epoch seconds at which a session reached each milestone of its start-up (None
    where it has not, or never does: a phase on Dask workers loads no model itself): its
    run Running, its first phase's run started, then that phase's `STARTUP_STAGES`.

    A cold session's imports, scan and model load take 4.5, 0.5-1 and 1-2 s: cut there, a
    session that has done its imports is no longer held to a calibrating session whose
    imports ran long (5 s, in a benchmark run while other work shared the 2 cores).
    Sessions from before the stages were counted have their scan and load in their last
    part, and none before it: until newer ones outnumber them in the window, a session
    past its scan counts from its first phase's start, as before (`api.progress._startup`)."""
    stages = dict(counts.stage_at) if counts is not None else {}
    return (
        running.timestamp() if running is not None else None,
        first_phase.timestamp() if first_phase is not None else None,
        *(stages.get(stage) for stage in STARTUP_STAGES),
    )


@dataclass(frozen=True)
class Timeline:
    """A session's time, measured on sessions finished earlier, in the parts it is made of.

    Start-up runs from the user's request to the embed phase's first batch in flight
    (process start, imports, model load, discovery and hashing); it differs by launch
    route (a warm indexer or a new process), so it is kept per route, in the parts its
    milestones cut it into: once a session has reached one, only the parts after it are
    still to come. Each later phase has an overhead (from the previous phase's end to
    its first batch) and then a cost per unit of work: a photo to do for embed and
    faces, a library photo for clustering. A phase's last batches run faster than its
    steady pace (`tasks.progress.tail_batches`): by `tail_batches` of a batch's time.
    `ramp_s` is when each of a phase's ramped first batches ended, by items done, in
    seconds from its first batch in flight: how fast a new session goes is told by its
    own ramp against these, before its steady pace is known. `found_rate` is, for a phase
    whose work an earlier phase finds (`PhaseSpec.found_by`: faces), how much it found a
    photo it looked in: a session whose photos hold more faces has more to encode.
    """

    startup_parts_s: Mapping[str, StartupParts]
    overhead_s: Mapping[str, float]
    per_unit_s: Mapping[str, float]
    sessions: int = 0
    tail_batches: Mapping[str, float] = field(default_factory=dict)
    ramp_s: Mapping[str, Mapping[int, float]] = field(default_factory=dict)
    found_rate: Mapping[str, float] = field(default_factory=dict)

    @property
    def startup_s(self) -> dict[str, float]:
        """Whole start-up seconds per route."""
        return {route: sum(parts) for route, parts in self.startup_parts_s.items()}

    def startup(self, route: str) -> tuple[StartupParts, str]:
        """Start-up parts for a route, and the route they were measured on: the slowest
        measured route stands in for one never measured."""
        if route in self.startup_parts_s:
            return self.startup_parts_s[route], route
        if not self.startup_parts_s:
            return (0.0,) * (3 + len(STARTUP_STAGES)), ""
        other = max(self.startup_parts_s, key=lambda r: sum(self.startup_parts_s[r]))
        return self.startup_parts_s[other], other


@dataclass(frozen=True)
class Calibration:
    """Measured seconds per session image of each phase, from sessions finished earlier."""

    seconds_per_image: Mapping[str, float] = field(default_factory=dict)
    sessions: int = 0
    timeline: Timeline | None = None


@dataclass(frozen=True)
class Weights:
    """The fixed weights of one session, and the per-image costs they came from."""

    shares: Mapping[str, float]
    source: str
    seconds_per_image: Mapping[str, float] = field(default_factory=dict)
    """Calibrated seconds per image, only for phases that have history."""
    timeline: Timeline | None = None
    """Measured start-up, overheads and unit costs: the percentage then follows time."""

    def schema(self) -> PhaseWeights:
        return weights_schema(self.shares)


def session_weights(calibration: Calibration, faces: bool) -> Weights:
    """Weights for a session: calibrated per-image costs when known, else the seed's."""
    active = [p for p in PHASES if faces or not BY_CONTRACT[p].needs_faces]
    measured = {p: s for p, s in calibration.seconds_per_image.items() if p in active and s > 0}
    timeline = calibration.timeline
    if timeline is not None and not all(p in timeline.per_unit_s for p in active):
        timeline = None  # a phase never measured: its time cannot be told
    if not measured:
        total = sum(SEED_WEIGHTS[p] for p in active)
        shares = {p: (SEED_WEIGHTS[p] / total if p in active else 0.0) for p in PHASES}
        if timeline is not None:
            plural = "s" if timeline.sessions != 1 else ""
            return Weights(
                shares, f"calibrated from {timeline.sessions} session{plural}, with start-up",
                timeline=timeline,
            )  # fmt: skip
        source = "seed-default" if faces else "seed-default, renormalised without face phases"
        return Weights(shares, source)
    anchor = FIRST if FIRST in measured else next(iter(measured))
    costs = dict(measured)
    derived = [p for p in active if p not in measured]
    for p in derived:
        costs[p] = measured[anchor] * SEED_WEIGHTS[p] / SEED_WEIGHTS[anchor]
    total = sum(costs.values())
    shares = {p: costs.get(p, 0.0) / total for p in PHASES}
    plural = "s" if calibration.sessions != 1 else ""
    source = f"calibrated from {calibration.sessions} session{plural}"
    if derived:
        source += f" ({', '.join(derived)} from seed ratios)"
    if not faces:
        source += ", without face phases"
    if derived:
        timeline = None
    if timeline is not None:
        source += ", with start-up"
    return Weights(shares, source, measured, timeline)


def weights_schema(shares: Mapping[str, float]) -> PhaseWeights:
    return PhaseWeights.model_validate({key: round(shares[key], 4) for key in PHASES})


def calibrate(
    previous: Sequence[FlowRun], per_parent: Sequence[Phases], route: str
) -> Calibration:
    """Seconds per session image of each phase, and the timeline, over completed sessions
    (each with its phases) for a session started by `route`.

    Both come from the sessions of `route` when those measured every phase the others
    did, from all of them otherwise (`_routed`); start-up is always per route.
    """
    if not previous:
        return Calibration()
    seconds: dict[str, float] = {}
    images: dict[str, int] = {}
    used = 0
    chosen, timeline = _routed(previous, per_parent, route)
    for phase_runs, latest in chosen:
        counts = counts_of(latest.get(PHASES[0]))
        embed = phase_runs.get(PHASES[0])
        if counts is None or counts.total <= 0 or embed is None:
            continue
        duration = run_state(embed).duration_s or 0.0
        # Items the run did itself; older artifacts carry only a rate to estimate it from.
        fresh = counts.fresh or counts.per_minute * duration / 60.0
        if fresh < MIN_FRESH_SHARE * counts.total:
            continue  # mostly reused work: it says little about real costs
        used += 1
        for phase, child in phase_runs.items():
            state = run_state(child)
            if state.state_type == "COMPLETED" and state.duration_s is not None:
                seconds[phase] = seconds.get(phase, 0.0) + state.duration_s
                images[phase] = images.get(phase, 0) + counts.total
    per_image = {p: seconds[p] / images[p] for p in seconds if images[p] > 0 and seconds[p] > 0}
    if not per_image:
        return Calibration(timeline=timeline)
    return Calibration(per_image, used, timeline)


def measure_timeline(
    previous: Sequence[FlowRun], per_parent: Sequence[Phases], route: str = ""
) -> Timeline | None:
    """Start-up (per launch route, from every session), overheads and unit costs (from
    the sessions `_routed` chooses) measured on finished sessions."""
    return _routed(previous, per_parent, route)[1]


def _routed(
    previous: Sequence[FlowRun], per_parent: Sequence[Phases], route: str
) -> tuple[list[Phases], Timeline | None]:
    """The phases of the sessions costs are taken from, and their timeline.

    Those are the sessions of `route` when they measured every phase the others did, all
    of them otherwise: a new process pays one-off costs inside its phases too (the first
    forward pass, clustering's imports) that a warm indexer has already paid. Start-up
    is always measured per route over every session.
    """
    every = list(per_parent)
    pooled = _measure(previous, per_parent)
    if pooled is None:
        return every, None
    same = [(p, phases) for p, phases in zip(previous, per_parent, strict=True)
            if route and launch_route(p.tags) == route]  # fmt: skip
    measured = _measure([p for p, _ in same], [phases for _, phases in same]) if same else None
    if measured is None or not measured.per_unit_s.keys() >= pooled.per_unit_s.keys():
        return every, pooled
    return [phases for _, phases in same], replace(measured, startup_parts_s=pooled.startup_parts_s)


def _measure(previous: Sequence[FlowRun], per_parent: Sequence[Phases]) -> Timeline | None:
    """The timeline of these sessions, all routes pooled but for start-up.

    Each session's time is cut where its phases say work began (`work_started`, the first
    batch in flight) and where each phase run ended; sessions whose artifacts predate
    these counts are left out.
    """
    startup: dict[str, list[StartupParts]] = {}
    overhead: dict[str, list[float]] = {}
    spent: dict[str, list[tuple[float, float]]] = {}  # (seconds, units) a session
    tails: dict[str, list[float]] = {}
    ramps: dict[str, dict[int, list[float]]] = {}
    found: dict[str, list[float]] = {}  # a phase found by another: found, looked, its units
    used = 0
    for parent, (runs, artifacts) in zip(previous, per_parent, strict=True):
        created = session_start(utc(parent.created), counts_of(artifacts.get("session")))
        end = utc(parent.end_time)
        embed = counts_of(artifacts.get(PHASES[0]))
        if created is None or end is None or embed is None or embed.todo < 0:
            continue
        used += 1
        segment_start = created.timestamp()
        for key in PHASES:
            run, counts = runs.get(key), counts_of(artifacts.get(key))
            run_end = utc(run.end_time) if run is not None else None
            if run is None or run_end is None or counts is None:
                break
            last = key == PHASES[-1] or PHASES[PHASES.index(key) + 1] not in runs
            stop = end.timestamp() if last else run_end.timestamp()
            began = counts.work_started if counts.work_started > 0 else stop
            if key == PHASES[0]:
                milestones = startup_milestones(utc(parent.start_time), utc(run.start_time), counts)
                parts = startup_parts(segment_start, milestones, began)
                startup.setdefault(launch_route(parent.tags), []).append(parts)
            else:
                overhead.setdefault(key, []).append(max(0.0, began - segment_start))
            n = embed.total if BY_CONTRACT[key].units == "library" else counts.todo
            if counts.work_started > 0 and n > 0:
                spent.setdefault(key, []).append((max(0.0, stop - began), n))
                finder = BY_CONTRACT[key].found_by  # what the cost above met a unit
                finds = counts_of(artifacts.get(finder)) if finder else None
                if finds is not None and finds.looked > 0:
                    total = found.setdefault(key, [0, 0, 0])
                    total[0] += finds.found
                    total[1] += finds.looked
                    total[2] += n
            if counts.tail is not None:
                tails.setdefault(key, []).append(counts.tail)
            for items, seconds in counts.ramp_marks:
                ramps.setdefault(key, {}).setdefault(items, []).append(seconds)
            segment_start = run_end.timestamp()
    if not used or not startup:
        return None
    return Timeline(
        startup_parts_s={route: _median_parts(v) for route, v in startup.items()},
        overhead_s={key: statistics.median(v) for key, v in overhead.items()},
        per_unit_s={key: _unit_cost(worked) for key, worked in spent.items()},
        sessions=used,
        tail_batches={key: statistics.median(v) for key, v in tails.items()},
        ramp_s={key: {n: statistics.median(v) for n, v in marks.items()}
                for key, marks in ramps.items()},
        # only where every session that set the cost counted its finds: a rate measured
        # on some of them (older ones counted none) need not be the one the cost met
        found_rate={key: n / looked for key, (n, looked, covered) in found.items()
                    if covered >= sum(n for _, n in spent[key])},
    )  # fmt: skip


def _unit_cost(worked: Sequence[tuple[float, float]]) -> float:
    """Seconds a unit of work, over sessions' (seconds, units): with three or more, the
    median of their costs weighted by their units, else all their seconds over all their
    units. One session in the window can be slow for its own reasons: the warm indexer's
    first session ended its clustering 0.3-0.4 s late in 2 of 22 benchmark runs (its
    work took no longer), which alone put the next session's ETA 0.5 s long to the end."""
    if len(worked) < 3:
        return sum(s for s, _ in worked) / sum(n for _, n in worked)
    costs = sorted((s / n, n) for s, n in worked)
    half, seen = sum(n for _, n in costs) / 2.0, 0.0
    for cost, n in costs:
        seen += n
        if seen >= half:
            return cost
    return costs[-1][0]


def startup_parts(
    asked: float, milestones: Sequence[float | None], began: float
) -> StartupParts:
    """A start-up cut at its milestones (epoch seconds from `asked` to `began`); a
    milestone not known, or out of order, adds nothing to its part."""
    cuts = [asked]
    for when in milestones:
        at = when if when is not None else cuts[-1]
        cuts.append(min(max(at, cuts[-1]), max(began, cuts[-1])))
    cuts.append(max(began, cuts[-1]))
    return tuple(b - a for a, b in zip(cuts, cuts[1:], strict=False))


def _median_parts(measured: Sequence[StartupParts]) -> StartupParts:
    """Each part's median over the sessions: a session that lost 2 s to a refused write
    (Prefect's SQLite server answers 503 now and then, and its client retries 2 s later)
    or to a cold page cache does not set the next sessions' estimate, once three or more
    sessions are known (with one or two it is their mean)."""
    return tuple(statistics.median(p[i] for p in measured) for i in range(len(measured[0])))
