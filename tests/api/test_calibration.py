"""Calibration from finished sessions: start-up per launch route, overheads, unit costs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest
from prefect.client.schemas.objects import Artifact, FlowRun

from api.weights import calibrate, measure_timeline, startup_parts
from tasks.progress import Counts

T0 = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def session(route: str, created: float, phases: dict[str, tuple[float, float, Counts]],
            end: float) -> tuple[FlowRun, tuple[dict[str, FlowRun], dict[str, Artifact]]]:
    """A finished session: its parent run, and per phase (start, end, final counts)."""
    parent = FlowRun.model_validate({
        "flow_id": uuid4(), "created": at(created), "start_time": at(created + 0.2),
        "end_time": at(end), "tags": [f"photoindex-launch:{route}"],
    })  # fmt: skip
    runs: dict[str, FlowRun] = {}
    artifacts: dict[str, Artifact] = {}
    for key, (start, stop, counts) in phases.items():
        run = FlowRun.model_validate({
            "flow_id": uuid4(), "start_time": at(start), "end_time": at(stop),
            "state_type": "COMPLETED",
            "state": {"type": "COMPLETED", "name": "Completed", "timestamp": at(stop)},
        })  # fmt: skip
        runs[key] = run
        artifacts[key] = Artifact(key=f"photoindex-{key.lower()}", type="progress",
                                  description=counts.describe(), flow_run_id=run.id)
    return parent, (runs, artifacts)


def counts(todo: int, began: float | None, total: int = 100,
           stages: tuple[tuple[str, float], ...] = ()) -> Counts:
    return Counts(total, total, todo=todo, fresh=todo, done=True,
                  work_started=at(began).timestamp() if began is not None else 0.0,
                  stage_at=tuple((stage, at(s).timestamp()) for stage, s in stages))


def test_each_part_of_a_session_is_measured_where_its_phases_say_work_began() -> None:
    cold = session("cold", 0.0, {
        # start-up 18 s (scan from 15.5 s, model load from 16.5), 16 s for 60 photos
        "training": (15.0, 34.0, counts(60, 18.0, stages=(("scanning", 15.5),
                                                          ("loading", 16.5)))),
        "faceDetection": (34.5, 45.0, counts(60, 36.0)),  # overhead 2 s, 9 s for 60
        "clustering": (45.5, 47.0, counts(1, 46.0)),      # overhead 1 s, 1.5 s to the end
    }, end=47.5)  # fmt: skip
    warm = session("warm", 100.0, {
        "training": (100.5, 107.0, counts(20, 101.0)),    # start-up 1 s, 6 s for 20 photos
        "faceDetection": (107.2, 111.0, counts(20, 108.0)),  # overhead 1 s, 3 s for 20
        "clustering": (111.1, 112.0, counts(0, None)),    # nothing new: all overhead
    }, end=112.0)  # fmt: skip
    timeline = measure_timeline([cold[0], warm[0]], [cold[1], warm[1]])
    assert timeline is not None and timeline.sessions == 2
    assert timeline.startup_s == {"cold": pytest.approx(18.0), "warm": pytest.approx(1.0)}
    # cut where the run went Running (0.2 s), where the embed run started (15 s), where it
    # began its scan and its model load; a session that said no stages has their time after
    assert timeline.startup_parts_s["cold"] == pytest.approx((0.2, 14.8, 0.5, 1.0, 1.5))
    assert timeline.startup_parts_s["warm"] == pytest.approx((0.2, 0.3, 0.0, 0.0, 0.5))
    assert timeline.startup("deployment") == timeline.startup("cold")  # the slower route's
    assert timeline.startup("deployment")[1] == "cold"
    assert timeline.per_unit_s["training"] == pytest.approx((16.0 + 6.0) / 80)
    assert timeline.per_unit_s["faceDetection"] == pytest.approx((9.0 + 3.0) / 80)
    assert timeline.per_unit_s["clustering"] == pytest.approx(1.5 / 100)
    assert timeline.overhead_s["faceDetection"] == pytest.approx(1.5)
    assert timeline.overhead_s["clustering"] == pytest.approx((1.0 + 1.0) / 2)


def test_milestones_out_of_order_add_nothing_to_their_part() -> None:
    """An embed run that reports a start before its parent's (clock skew) or a first
    batch: each part stays within the start-up, none is negative."""
    asked = at(0.0).timestamp()
    def parts(*milestones: float | None) -> tuple[float, ...]:
        cuts = [None if m is None else at(m).timestamp() for m in milestones]
        return startup_parts(asked, cuts, at(10.0).timestamp())

    assert parts(2.0, 1.0) == pytest.approx((2.0, 0.0, 8.0))
    assert parts(None, 12.0) == pytest.approx((0.0, 10.0, 0.0))
    assert parts(1.0, 2.0, 6.0, 5.0) == pytest.approx((1.0, 1.0, 4.0, 0.0, 4.0))


def test_sessions_from_before_the_timeline_counts_are_left_out() -> None:
    old = session("", 0.0, {"training": (1.0, 9.0, Counts(100, 100, done=True))}, end=9.0)
    assert measure_timeline([old[0]], [old[1]]) is None


def test_a_routes_own_sessions_set_its_unit_costs_when_they_measured_every_phase() -> None:
    cold = session("cold", 0.0, {
        "training": (15.0, 34.0, counts(60, 18.0)),      # 16 s for 60: a first forward pass
        "faceDetection": (34.5, 45.0, counts(60, 36.0)),
        "clustering": (45.5, 49.0, counts(1, 46.0)),      # 3 s: clustering's imports too
    }, end=49.5)  # fmt: skip
    warm = session("warm", 100.0, {
        "training": (100.5, 107.0, counts(60, 101.0)),    # 6 s for 60
        "faceDetection": (107.2, 111.0, counts(60, 108.0)),
        "clustering": (111.1, 112.0, counts(1, 111.5)),
    }, end=112.0)  # fmt: skip
    runs, phases = [cold[0], warm[0]], [cold[1], warm[1]]
    for_warm = measure_timeline(runs, phases, "warm")
    for_cold = measure_timeline(runs, phases, "cold")
    pooled = measure_timeline(runs, phases, "deployment")  # no session of its own: all of them
    assert for_warm is not None and for_cold is not None and pooled is not None
    assert for_warm.per_unit_s["training"] == pytest.approx(6.0 / 60)
    assert for_cold.per_unit_s["training"] == pytest.approx(16.0 / 60)
    assert pooled.per_unit_s["training"] == pytest.approx(22.0 / 120)
    assert for_warm.per_unit_s["clustering"] == pytest.approx(0.5 / 100)
    assert for_warm.overhead_s["faceDetection"] == pytest.approx(1.0)
    # start-up stays known for every route, whichever route asks
    assert for_warm.startup_s == for_cold.startup_s == pooled.startup_s
    assert for_warm.startup_s == {"cold": pytest.approx(18.0), "warm": pytest.approx(1.0)}
    # The phase shares follow the same sessions: the warm route's alone, all for the others.
    warm_shares = calibrate(runs, phases, "warm")
    assert warm_shares.sessions == 1
    assert warm_shares.seconds_per_image["training"] == pytest.approx(6.5 / 100)
    assert calibrate(runs, phases, "deployment").sessions == 2


def test_a_route_whose_sessions_missed_a_phase_takes_every_sessions_costs() -> None:
    cold = session("cold", 0.0, {
        "training": (15.0, 34.0, counts(60, 18.0)),
        "faceDetection": (34.5, 45.0, counts(60, 36.0)),
        "clustering": (45.5, 47.0, counts(1, 46.0)),
    }, end=47.5)  # fmt: skip
    warm_without_faces = session("warm", 100.0, {
        "training": (100.5, 107.0, counts(60, 101.0)),
    }, end=107.5)  # fmt: skip
    timeline = measure_timeline([cold[0], warm_without_faces[0]], [cold[1], warm_without_faces[1]],
                         "warm")  # fmt: skip
    assert timeline is not None
    assert set(timeline.per_unit_s) == {"training", "faceDetection", "clustering"}
    # the warm session's last phase runs to the session's end: 6.5 s
    assert timeline.per_unit_s["training"] == pytest.approx((16.0 + 6.5) / 120)


def test_start_up_counts_from_when_the_user_asked_when_the_launcher_says() -> None:
    """The command's own start (imports, the fast scan) is start-up its user waits for."""
    cold = session("cold", 2.0, {
        "training": (3.0, 20.0, counts(60, 14.0)),
        "faceDetection": (20.5, 25.0, counts(60, 21.0)),
        "clustering": (25.5, 26.0, counts(1, 25.6)),
    }, end=26.5)  # fmt: skip
    cold[1][1]["session"] = Artifact(
        key="photoindex-session", type="progress",
        description=Counts(0, 100, todo=60, stage="queued", requested=at(0.0).timestamp())
        .describe(),
    )  # fmt: skip
    timeline = measure_timeline([cold[0]], [cold[1]])
    assert timeline is not None
    assert timeline.startup_s == {"cold": pytest.approx(14.0)}  # not 12 s from the run's creation
    # its first part, to the run's claim, has the command's own 2 s in it
    assert timeline.startup_parts_s["cold"] == pytest.approx((2.2, 0.8, 0.0, 0.0, 11.0))


def test_one_session_that_stalled_does_not_set_the_estimate_of_the_next() -> None:
    """Of three warm sessions, one lost 2.4 s before its faces phase (a write the Prefect
    server refused, retried 2 s later) and started 2 s late: the median keeps the others'."""
    def warm(t0: float, late: float, stall: float) -> tuple[
        FlowRun, tuple[dict[str, FlowRun], dict[str, Artifact]]
    ]:
        return session("warm", t0, {
            "training": (t0 + 0.5, t0 + 7.0 + late, counts(20, t0 + 1.0 + late)),
            "faceDetection": (t0 + 7.2 + late + stall, t0 + 11.0 + late + stall,
                              counts(20, t0 + 8.0 + late + stall)),
            "clustering": (t0 + 11.1 + late + stall, t0 + 12.0 + late + stall, counts(1, None)),
        }, end=t0 + 12.0 + late + stall)  # fmt: skip

    sessions = [warm(0.0, 0.0, 0.0), warm(100.0, 2.0, 2.4), warm(200.0, 0.0, 0.0)]
    timeline = measure_timeline([s[0] for s in sessions], [s[1] for s in sessions], "warm")
    assert timeline is not None and timeline.sessions == 3
    assert timeline.startup_parts_s["warm"] == pytest.approx((0.2, 0.3, 0.0, 0.0, 0.5))
    assert timeline.overhead_s["faceDetection"] == pytest.approx(1.0)


def test_one_session_that_ended_late_does_not_set_the_next_ones_unit_costs() -> None:
    """Of three warm sessions, one ended its clustering 0.4 s late after the same work (the
    warm indexer's first session did, in 2 of 22 benchmark runs): its cost a library photo
    is not the next session's. With two sessions there is no telling: their mean."""
    def warm(t0: float, late: float, photos: int = 100) -> tuple[
        FlowRun, tuple[dict[str, FlowRun], dict[str, Artifact]]
    ]:
        return session("warm", t0, {
            "training": (t0 + 0.5, t0 + 7.0, counts(20, t0 + 1.0, total=photos)),
            "faceDetection": (t0 + 7.2, t0 + 11.0, counts(20, t0 + 8.0, total=photos)),
            "clustering": (t0 + 11.1, t0 + 11.5 + late, counts(1, t0 + 11.3, total=photos)),
        }, end=t0 + 11.5 + late)  # fmt: skip

    sessions = [warm(0.0, 0.0), warm(100.0, 0.4), warm(200.0, 0.0, photos=120)]
    timeline = measure_timeline([s[0] for s in sessions], [s[1] for s in sessions], "warm")
    assert timeline is not None
    # 0.2 s for 100 photos twice and 0.2 s for 120 once: the middle one by photos
    assert timeline.per_unit_s["clustering"] == pytest.approx(0.2 / 100)
    both = measure_timeline([s[0] for s in sessions[:2]], [s[1] for s in sessions[:2]], "warm")
    assert both is not None
    assert both.per_unit_s["clustering"] == pytest.approx((0.2 + 0.6) / 200)


def warm_with_embed(
    t0: float,
    tail: float | None = None,
    ramp_marks: tuple[tuple[int, float], ...] = (),
    found: tuple[int, int] = (0, 0),
) -> tuple[FlowRun, tuple[dict[str, FlowRun], dict[str, Artifact]]]:
    """A warm session of 80 new photos whose embed phase's last counts say `tail`,
    `ramp_marks`, and the photos it looked in for faces and the faces it `found`."""
    counts_ = Counts(100, 100, todo=80, fresh=80, done=True, batch=16, tail=tail,
                     ramp_marks=ramp_marks, work_started=at(t0 + 1.0).timestamp(),
                     looked=found[0], found=found[1])  # fmt: skip
    return session("warm", t0, {
        "training": (t0 + 0.5, t0 + 7.0, counts_),
        "faceDetection": (t0 + 7.2, t0 + 11.0, counts(20, t0 + 8.0)),
        "clustering": (t0 + 11.1, t0 + 12.0, counts(1, None)),
    }, end=t0 + 12.0)  # fmt: skip


def test_a_phases_tail_is_the_median_of_the_sessions_that_measured_one() -> None:
    """Embed's last batches beat its steady pace by 0.3, 0.4 and 0.9 of a batch in three
    sessions; a fourth did too few photos to say (no tail): the median is 0.4."""
    sessions = [warm_with_embed(0.0, tail=0.3), warm_with_embed(100.0, tail=0.9),
                warm_with_embed(200.0, tail=None), warm_with_embed(300.0, tail=0.4)]  # fmt: skip
    timeline = measure_timeline([s[0] for s in sessions], [s[1] for s in sessions], "warm")
    assert timeline is not None
    assert timeline.tail_batches == {"training": pytest.approx(0.4)}


def test_a_phases_ramp_is_the_median_of_each_mark_over_the_sessions() -> None:
    """Three sessions' ramped first batches ended 7 items in at 1.0, 1.2 and 1.1 s and 15
    in at 2.0, 2.6 and 2.2 s; a fourth did 5 photos (one mark, at 5): each mark's median."""
    sessions = [warm_with_embed(0.0, ramp_marks=((7, 1.0), (15, 2.0))),
                warm_with_embed(100.0, ramp_marks=((7, 1.2), (15, 2.6))),
                warm_with_embed(200.0, ramp_marks=((5, 0.9),)),
                warm_with_embed(300.0, ramp_marks=((7, 1.1), (15, 2.2)))]  # fmt: skip
    timeline = measure_timeline([s[0] for s in sessions], [s[1] for s in sessions], "warm")
    assert timeline is not None
    assert timeline.ramp_s == {"training": {5: pytest.approx(0.9), 7: pytest.approx(1.1),
                                            15: pytest.approx(2.2)}}  # fmt: skip


def test_the_faces_found_a_photo_are_what_the_faces_phases_cost_met() -> None:
    """The embed phase looked in 80 photos a session for faces and found 40, then 60: the
    faces phase's calibrated cost a photo met 100 faces in 160 photos. With a session from
    before it counted them among those that set the cost, the rate is not known."""
    sessions = [warm_with_embed(0.0, found=(80, 40)), warm_with_embed(200.0, found=(80, 60))]
    timeline = measure_timeline([s[0] for s in sessions], [s[1] for s in sessions], "warm")
    assert timeline is not None
    assert timeline.found_rate == {"faceDetection": pytest.approx(100 / 160)}
    sessions.append(warm_with_embed(100.0))
    timeline = measure_timeline([s[0] for s in sessions], [s[1] for s in sessions], "warm")
    assert timeline is not None and timeline.found_rate == {}
