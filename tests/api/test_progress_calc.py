"""The pure unified-progress calculation: the seed's cases and the rules beyond them."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest

from api.progress import (
    PhaseSnapshot,
    SessionSnapshot,
    compute_progress,
    face_session,
    time_left_s,
    training_progress,
)
from api.runs import RunState
from api.schemas import UnifiedProgressResponse
from api.weights import Calibration, Timeline, Weights, session_weights
from tasks.progress import Counts

NOW = datetime(2026, 1, 12, 10, 5, tzinfo=UTC)
SEED = session_weights(Calibration(), faces=True)


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


def running(started_s: float = 60) -> RunState:
    return RunState("RUNNING", start_time=ago(started_s), state_time=ago(started_s))


def done(started_s: float = 120, ended_s: float = 60, state: str = "COMPLETED") -> RunState:
    end = ago(ended_s)
    return RunState(state, start_time=ago(started_s), end_time=end, state_time=end)


def phase(run: RunState | None, current: int = 0, total: int = 100, per_minute: float = 0.0,
          updated_s: float = 1, finished: bool = False) -> PhaseSnapshot:
    counts = Counts(current, total, per_minute=per_minute, done=finished)
    return PhaseSnapshot(run=run, counts=counts, artifact_updated=ago(updated_s))


def snapshot(
    parent: str = "RUNNING", faces: bool = True, **phases: PhaseSnapshot
) -> SessionSnapshot:
    end = ago(1) if parent in {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"} else None
    return SessionSnapshot(
        session_id=uuid4(),
        parent=RunState(parent, start_time=ago(600), end_time=end, state_time=ago(600)),
        faces=faces,
        phases=phases,
        now=NOW,
    )


def calc(snap: SessionSnapshot, weights: Weights = SEED) -> UnifiedProgressResponse:
    return compute_progress(snap, weights)


def test_seed_case_training_half_done() -> None:
    """100 images, 50 embedded: 15.0 overall, current phase training."""
    result = calc(snapshot(training=phase(running(), 50)))
    assert result.overall_progress.percentage == 15.0
    assert result.overall_progress.current_phase == "training"
    assert result.overall_status == "running"
    assert result.phases.training.status == "running"
    assert result.phases.faceDetection.status == "pending"
    assert result.phases.clustering.status == "pending"
    assert result.weights_source == "seed-default"


def test_seed_case_faces_half_done() -> None:
    """Training done, faces half done: 62.5, face_detection, completed + processing."""
    result = calc(snapshot(
        training=phase(done(), 100, finished=True), faceDetection=phase(running(), 50)
    ))
    assert result.overall_progress.percentage == 62.5
    assert result.overall_progress.current_phase == "face_detection"
    assert result.phases.training.status == "completed"
    assert result.phases.faceDetection.status == "processing"
    assert result.phases.faceDetection.progress.percentage == 50.0


def test_seed_case_all_done() -> None:
    """Every phase done: 100.0 and completed everywhere."""
    result = calc(snapshot(
        "COMPLETED",
        training=phase(done(), 100, finished=True),
        faceDetection=phase(done(), 100, finished=True),
        clustering=phase(done(), 40, total=40, finished=True),
    ))
    assert result.overall_progress.percentage == 100.0
    assert result.overall_status == "completed"
    assert result.overall_progress.current_phase == "completed"
    assert {p.status for p in (result.phases.training, result.phases.faceDetection,
                               result.phases.clustering)} == {"completed"}
    assert result.phases.clustering.progress.total == 40


def test_never_100_before_the_session_ends() -> None:
    """All phases finished but the parent still running: below 100, not completed."""
    result = calc(snapshot(
        training=phase(done(), 100, finished=True),
        faceDetection=phase(done(), 100, finished=True),
        clustering=phase(done(), 3, total=3, finished=True),
    ))
    assert result.overall_status == "running"
    assert result.overall_progress.percentage == 99.99


def test_skipped_face_phases_renormalise() -> None:
    """Without faces, training carries all the weight and the face phases say skipped."""
    weights = session_weights(Calibration(), faces=False)
    half = calc(snapshot(faces=False, training=phase(running(), 50)), weights)
    assert half.overall_progress.percentage == 50.0
    assert half.phases.faceDetection.status == "skipped"
    assert half.phases.clustering.status == "skipped"
    assert half.weights.training == 1.0
    assert "renormalised" in half.weights_source
    finished = calc(snapshot("COMPLETED", faces=False, training=phase(done(), 100)), weights)
    assert finished.overall_status == "completed"
    assert finished.overall_progress.percentage == 100.0


def test_failed_face_phase_fails_the_session() -> None:
    """A failed face phase turns the session failed while training stays completed."""
    failed = RunState("FAILED", start_time=ago(50), end_time=ago(10), state_time=ago(10),
                      message="Flow run encountered an exception: RuntimeError('boom')")
    result = calc(snapshot(
        "FAILED", training=phase(done(), 100, finished=True), faceDetection=phase(failed, 30)
    ))
    assert result.overall_status == "failed"
    assert result.phases.training.status == "completed"
    assert result.phases.faceDetection.status == "failed"
    assert result.phases.clustering.status == "skipped"
    assert result.overall_progress.current_phase == "face_detection"
    assert result.overall_progress.percentage == pytest.approx(30 + 0.65 * 30)
    assert any("boom" in w for w in result.warnings)


def test_crashed_counts_as_failed() -> None:
    result = calc(snapshot("CRASHED", training=phase(done(state="CRASHED"), 10)))
    assert result.overall_status == "failed"
    assert result.phases.training.status == "failed"


def test_silent_run_becomes_stalled() -> None:
    """A run killed without Prefect noticing is stalled after the silence limit, with a warning."""
    result = calc(snapshot(training=phase(running(900), 40, updated_s=300)))
    assert result.overall_status == "stalled"
    assert result.phases.training.status == "stalled"
    assert any("300 s" in w and "killed" in w for w in result.warnings)
    assert result.overall_progress.eta_seconds is None
    fresh = calc(snapshot(training=phase(running(900), 40, updated_s=5)))
    assert fresh.overall_status == "running"


def test_silent_between_phases_is_stalled() -> None:
    """A session silent between phases (no run alive) also stalls."""
    snap = snapshot(training=phase(done(900, 800), 100, finished=True, updated_s=800))
    snap = SessionSnapshot(**{**snap.__dict__, "parent": RunState(
        "RUNNING", start_time=ago(1000), state_time=ago(1000))})
    result = calc(snap)
    assert result.overall_status == "stalled"
    assert any("between phases" in w for w in result.warnings)


def test_paused_and_cancelled_as_prefect_reports() -> None:
    paused = calc(snapshot(training=phase(RunState("PAUSED", start_time=ago(60)), 20)))
    assert paused.overall_status == "paused"
    assert paused.phases.training.status == "paused"
    cancelled = calc(snapshot("CANCELLED", training=phase(done(state="CANCELLED"), 20)))
    assert cancelled.overall_status == "cancelled"
    assert cancelled.phases.faceDetection.status == "cancelled"


def test_cancelling_until_the_session_has_stopped() -> None:
    """A requested cancel is `cancelling` until Prefect reports the session Cancelled."""
    result = calc(snapshot("CANCELLING", training=phase(RunState("CANCELLING"), 20)))
    assert result.overall_status == "cancelling"
    assert result.phases.training.status == "cancelling"
    assert result.phases.faceDetection.status == "cancelled"
    requested = SessionSnapshot(**{**snapshot(training=phase(running(), 20)).__dict__,
                                   "cancel_requested": True})
    assert calc(requested).overall_status == "cancelling"


def test_pending_before_anything_runs() -> None:
    snap = SessionSnapshot(session_id=uuid4(), parent=RunState("PENDING"), faces=True,
                           phases={}, now=NOW)
    result = calc(snap)
    assert result.overall_status == "pending"
    assert result.overall_progress.percentage == 0.0
    assert result.overall_progress.eta_seconds is None
    assert result.overall_progress.current_phase == "training"


def test_eta_from_measured_rate_and_seed_ratios() -> None:
    """No history: training from its rate, later phases from the seed's ratios."""
    result = calc(snapshot(training=phase(running(), 50, per_minute=60.0)))
    # 50 left at 1/s, then faces 100 x 1 s x 65/30 and clustering 100 x 1 s x 5/30.
    assert result.phases.training.progress.eta_seconds == 50
    assert result.overall_progress.eta_seconds == round(50 + 100 * 65 / 30 + 100 * 5 / 30)


def test_eta_from_calibrated_costs() -> None:
    """With history: later phases from calibrated per-image seconds."""
    weights = session_weights(
        Calibration({"training": 0.5, "faceDetection": 2.0, "clustering": 0.1}, sessions=3),
        faces=True,
    )
    assert weights.source == "calibrated from 3 sessions"
    assert weights.shares["faceDetection"] == pytest.approx(2.0 / 2.6)
    result = calc(snapshot(training=phase(running(), 50, per_minute=120.0)), weights)
    assert result.overall_progress.eta_seconds == 25 + 200 + 10
    assert result.overall_progress.percentage == round(100 * 0.5 / 2.6 * 0.5, 2)


def test_eta_unknown_without_a_rate() -> None:
    result = calc(snapshot(training=phase(running(), 0)))
    assert result.overall_progress.eta_seconds is None


def test_slow_phase_warns() -> None:
    """A phase clearly slower than its history gets a warning (the seed's open question 4)."""
    weights = session_weights(Calibration({"training": 0.1}, sessions=1), faces=True)
    result = calc(snapshot(training=phase(running(), 50, per_minute=60.0)), weights)
    assert any("slower than in recent sessions" in w for w in result.warnings)
    assert "faceDetection, clustering from seed ratios" in result.weights_source


def test_percentage_never_goes_below_an_earlier_report() -> None:
    snap = snapshot(training=phase(running(), 10))
    lowered = SessionSnapshot(**{**snap.__dict__, "floor_percentage": 40.0})
    assert calc(lowered).overall_progress.percentage == 40.0


def test_percentage_rises_monotonically_through_a_session() -> None:
    steps = [
        snapshot(training=phase(running(), n)) for n in (0, 10, 50, 99)
    ] + [
        snapshot(training=phase(done(), 100, finished=True), faceDetection=phase(running(), n))
        for n in (0, 50, 100)
    ] + [
        snapshot(training=phase(done(), 100, finished=True),
                 faceDetection=phase(done(), 100, finished=True),
                 clustering=phase(running(), 1, total=2)),
        snapshot("COMPLETED", training=phase(done(), 100, finished=True),
                 faceDetection=phase(done(), 100, finished=True),
                 clustering=phase(done(), 2, total=2, finished=True)),
    ]
    seen = [calc(s).overall_progress.percentage for s in steps]
    assert seen == sorted(seen)
    assert seen[-1] == 100.0 and max(seen[:-1]) < 100.0


def test_legacy_and_face_session_views() -> None:
    result = calc(snapshot(
        training=phase(done(), 100, finished=True), faceDetection=phase(running(), 50)
    ))
    legacy = training_progress(result)
    assert legacy.status == "completed" and legacy.progress.percentage == 100.0
    faces = face_session(result)
    assert faces.status == "processing"
    assert faces.progress.current == 50
    assert faces.clustering.status == "pending"


def test_json_uses_the_seed_field_names() -> None:
    result = calc(snapshot(training=phase(running(), 50)))
    data = result.model_dump(mode="json")
    assert set(data) >= {"sessionId", "overallStatus", "overallProgress", "phases", "weights",
                         "weightsSource", "warnings", "updatedAt"}
    assert set(data["overallProgress"]) == {"percentage", "etaSeconds", "currentPhase"}
    assert set(data["phases"]) == {"training", "faceDetection", "clustering"}
    training = data["phases"]["training"]
    assert set(training) == {"name", "status", "progress", "startedAt", "completedAt", "message"}
    assert {"current", "total", "percentage", "etaSeconds", "imagesPerMinute"} <= set(
        training["progress"]
    )


def with_(snap: SessionSnapshot, **changes: object) -> SessionSnapshot:
    return SessionSnapshot(**{**snap.__dict__, **changes})


def test_killed_run_turns_failed_after_the_fail_limit() -> None:
    """SIGKILL leaves a run Running forever: silent past fail_after_s, the session is failed."""
    snap = with_(
        snapshot(training=phase(done(), 100, finished=True),
                 faceDetection=phase(running(2000), 40, updated_s=1000)),
        folder="/photos/holiday",
    )
    result = calc(snap)
    assert result.overall_status == "failed"
    faces = result.phases.faceDetection
    assert faces.status == "failed"
    assert faces.message is not None
    assert "1000 s" in faces.message and "900 s" in faces.message
    assert "probably died" in faces.message
    assert "Re-run the same folder (/photos/holiday" in faces.message
    assert "photoindex index /photos/holiday" in faces.message
    assert "kept" in faces.message
    assert faces.message in result.warnings
    assert result.phases.training.status == "completed"
    assert result.phases.clustering.status == "skipped"  # never started, as in a failed session
    assert result.overall_progress.current_phase == "face_detection"
    assert result.overall_progress.eta_seconds is None
    assert result.overall_progress.percentage == pytest.approx(30 + 0.65 * 40)
    assert face_session(result).status == "failed"


def test_silence_is_running_then_stalled_then_failed() -> None:
    def status(silent_s: float) -> str:
        return calc(snapshot(training=phase(running(5000), 40, updated_s=silent_s))).overall_status

    assert [status(s) for s in (10, 121, 899, 901, 100_000)] == [
        "running", "stalled", "stalled", "failed", "failed",
    ]


def test_fail_limit_follows_the_settings() -> None:
    snap = snapshot(training=phase(running(5000), 40, updated_s=30))
    assert calc(with_(snap, stall_after_s=10, fail_after_s=20)).overall_status == "failed"
    assert calc(with_(snap, stall_after_s=10, fail_after_s=60)).overall_status == "stalled"
    no_folder = calc(with_(snap, stall_after_s=10, fail_after_s=20)).phases.training.message
    assert no_folder is not None and "Re-run the same folder to finish" in no_folder


def test_killed_between_phases_turns_failed() -> None:
    """Silent with no phase run alive (killed between phases): failed, with the reason."""
    snap = with_(
        snapshot(training=phase(done(2000, 1900), 100, finished=True, updated_s=1900)),
        parent=RunState("RUNNING", start_time=ago(2100), state_time=ago(2100)),
    )
    result = calc(snap)
    assert result.overall_status == "failed"
    assert result.phases.training.status == "completed"
    assert result.phases.faceDetection.status == "skipped"
    assert any("between phases" in w and "probably died" in w for w in result.warnings)
    assert not any("may have been killed" in w for w in result.warnings)


def test_paused_sessions_never_stall_or_fail() -> None:
    """A pause may last days: a paused run is paused however long it has been silent."""
    paused = RunState("PAUSED", start_time=ago(90_000), state_time=ago(86_000))
    result = calc(snapshot(training=phase(paused, 20, updated_s=86_000)))
    assert result.overall_status == "paused"
    assert result.phases.training.status == "paused"
    assert result.warnings == []
    parent_paused = with_(
        snapshot(training=phase(done(90_000, 89_000), 100, finished=True, updated_s=89_000)),
        parent=RunState("PAUSED", start_time=ago(90_000), state_time=ago(88_000)),
    )
    assert calc(parent_paused).overall_status == "paused"


def test_a_run_that_reports_again_is_running_again() -> None:
    """The status is judged afresh each time: a frozen process that recovers reads running."""
    assert calc(snapshot(training=phase(running(5000), 40, updated_s=2000))).overall_status == (
        "failed"
    )
    assert calc(snapshot(training=phase(running(5000), 41, updated_s=1))).overall_status == (
        "running"
    )


def test_a_running_phase_moves_with_the_clock_but_never_past_its_work_in_flight() -> None:
    """Calibrated: before its first batch is written, a phase advances by elapsed time,
    capped at the items in flight; the counts take over once they are ahead."""
    weights = session_weights(
        Calibration({"training": 0.5, "faceDetection": 0.5, "clustering": 0.01}, sessions=1),
        faces=True,
    )

    def training_at(current: int, active: int, started_s: float) -> float:
        counts = Counts(current, 100, active=active)
        snap = snapshot(
            training=PhaseSnapshot(run=running(started_s), counts=counts, artifact_updated=ago(1))
        )
        return calc(snap, weights).phases.training.progress.percentage

    # 100 images x 0.5 s = 50 s expected; 10 s in = 20 % by the clock.
    assert training_at(0, active=32, started_s=10) == 20.0
    # ... but never more than the 16 items in flight.
    assert training_at(0, active=16, started_s=10) == 16.0
    # Nothing in flight (models still loading, or discovery): counts only.
    assert training_at(0, active=0, started_s=10) == 0.0
    # Counts ahead of the clock win.
    assert training_at(60, active=16, started_s=10) == 60.0
    # Seed weights (no history): counts only.
    snap = snapshot(
        training=PhaseSnapshot(
            run=running(10), counts=Counts(0, 100, active=32), artifact_updated=ago(1)
        )
    )
    assert calc(snap).phases.training.progress.percentage == 0.0


# --- the calibrated timeline: start-up counts from the session's creation ------------------

TIMELINE = Timeline(
    # cold: 3 s to the process's claim, 1 s to the embed run, then 12 s: 8 of imports, 1.5
    # finding and hashing the photos, 2.5 loading the model
    startup_parts_s={"cold": (3.0, 1.0, 8.0, 1.5, 2.5), "warm": (0.2, 0.3, 0.1, 0.9, 0.5)},
    overhead_s={"faceDetection": 1.0, "clustering": 0.5},
    per_unit_s={"training": 0.3, "faceDetection": 0.1, "clustering": 0.01},
    sessions=2,
)
TIMED = session_weights(Calibration(timeline=TIMELINE), faces=True)
#: The same, with earlier sessions' embed phases ending 0.4 of a batch sooner than their
#: steady pace said (`tasks.progress.tail_batches`).
TAILED = session_weights(
    Calibration(timeline=replace(TIMELINE, tail_batches={"training": 0.4})), faces=True
)


def starting(route: str, created_s: float, parent: str = "PENDING", **phases: PhaseSnapshot
             ) -> SessionSnapshot:
    return SessionSnapshot(
        session_id=uuid4(),
        parent=RunState(parent, created=ago(created_s), state_time=ago(created_s)),
        faces=True,
        phases=phases,
        now=NOW,
        session=Counts(0, 100, todo=20, stage="queued"),
        launch=route,
    )


def test_timeline_weights_say_they_include_start_up() -> None:
    assert TIMED.timeline is TIMELINE
    assert TIMED.source == "calibrated from 2 sessions, with start-up"


def test_start_up_moves_the_bar_and_shows_an_eta_from_the_first_poll() -> None:
    """1.5 s after a cold session was created: 1.5 of an expected 26.5 s."""
    # expected: training 16 + 0.3 * 20 = 22, faces 1 + 0.1 * 20 = 3, clustering 0.5 + 0.01 * 100
    result = calc(starting("cold", 1.5), TIMED)
    assert result.overall_status == "pending"
    assert result.overall_progress.percentage == pytest.approx(100 * 1.5 / 26.5, abs=0.01)
    assert result.overall_progress.eta_seconds == 25
    assert result.phases.training.message == "Waiting for the session process to start"
    assert result.weights.training == pytest.approx(22 / 26.5, abs=1e-4)


def test_warm_and_cold_start_ups_are_calibrated_apart() -> None:
    cold, warm = calc(starting("cold", 1.5), TIMED), calc(starting("warm", 1.5), TIMED)
    # warm: 1.5 of 2 s start-up done, of 12.5 s in all
    assert warm.overall_progress.percentage == pytest.approx(100 * 1.5 / 12.5, abs=0.01)
    assert cold.overall_progress.percentage == pytest.approx(100 * 1.5 / 26.5, abs=0.01)
    assert warm.overall_progress.eta_seconds == 11


def test_start_up_counts_from_when_the_user_asked() -> None:
    """The command started 2 s before it created the run 1.5 s ago: 3.5 s of start-up."""
    asked = replace(starting("cold", 1.5), session=Counts(
        0, 100, todo=20, stage="queued", requested=ago(3.5).timestamp()))  # fmt: skip
    result = calc(asked, TIMED)
    assert result.overall_progress.percentage == pytest.approx(100 * 3.5 / 26.5, abs=0.01)
    assert result.overall_progress.eta_seconds == 23


def test_a_milestone_reached_early_takes_its_lead_off_the_rest_of_start_up() -> None:
    """A cold process that claimed its session 1 s after the request, not the calibrated
    3 s (a warm page cache): at 4.2 s, 1 + 1 + 12 s of start-up are expected, not 16."""
    early = starting("cold", 4.2, parent="RUNNING")
    early = replace(early, parent=replace(early.parent, start_time=ago(3.2)))
    result = calc(early, TIMED)
    left = (14.0 - 4.2) + 0.3 * 20 + 3.0 + 1.5
    assert result.overall_progress.eta_seconds == round(left)
    assert result.overall_progress.percentage == pytest.approx(100 * 4.2 / (4.2 + left), abs=0.01)
    assert result.phases.training.message == "Starting the session"


def test_the_last_milestone_reached_counts_and_only_the_parts_after_it_are_to_come() -> None:
    """The embed run started 9 s after the request (calibrated: 4 s): 9 s are a fact, the
    12 s of imports and model load are still to come, so the ETA does not shrink by the
    5 s the start-up is late."""
    late = starting("cold", 10.0, parent="RUNNING",
                    training=PhaseSnapshot(run=running(1.0), artifact_updated=ago(1.0)))
    late = replace(late, parent=replace(late.parent, start_time=ago(8.0)))
    result = calc(late, TIMED)
    left = (9.0 + 12.0 - 10.0) + 0.3 * 20 + 3.0 + 1.5
    assert result.overall_progress.eta_seconds == round(left)
    assert result.overall_progress.percentage == pytest.approx(
        100 * 10.0 / (10.0 + left), abs=0.01
    )


def test_a_phase_that_finished_its_imports_early_has_only_its_scan_and_load_to_come() -> None:
    """The embed run started 4 s after the request, as calibrated, and its scan 5 s later,
    not after the calibrated 8 s of imports: at 10 s, the scan's 1.5 s and the model's
    2.5 s are to come from 9 s, not the whole 12 s from 4 s. Before its model load, the
    stage a Dask worker's phase never reaches, the rest is calibrated as one. Calibrated on
    sessions that did not say their stages' times, the scan is no milestone."""
    def cold(stage_at: tuple[tuple[str, float], ...]) -> UnifiedProgressResponse:
        counts = Counts(0, 0, stage="scanning", stage_at=stage_at)
        embed = PhaseSnapshot(run=running(6.0), counts=counts, artifact_updated=ago(1.0))
        snap = starting("cold", 10.0, parent="RUNNING", training=embed)
        return calc(replace(snap, parent=replace(snap.parent, start_time=ago(7.0))), TIMED)

    after = 0.3 * 20 + 3.0 + 1.5
    scanning = cold((("scanning", ago(1.0).timestamp()),))
    assert scanning.overall_progress.eta_seconds == round(9.0 + 4.0 - 10.0 + after)
    assert scanning.overall_progress.percentage == pytest.approx(
        100 * 10.0 / (13.0 + after), abs=0.01
    )
    assert cold(()).overall_progress.eta_seconds == round(4.0 + 12.0 - 10.0 + after)
    loading = cold((("scanning", ago(3.0).timestamp()), ("loading", ago(0.5).timestamp())))
    assert loading.overall_progress.eta_seconds == round(9.5 + 2.5 - 10.0 + after)
    # calibrated on sessions from before the stages were counted: their 12 s in one part
    older = session_weights(Calibration(timeline=replace(
        TIMELINE, startup_parts_s={"cold": (3.0, 1.0, 0.0, 0.0, 12.0)})), faces=True)  # fmt: skip
    snap = starting("cold", 10.0, parent="RUNNING", training=PhaseSnapshot(
        run=running(6.0), artifact_updated=ago(1.0),
        counts=Counts(0, 0, stage="scanning", stage_at=(("scanning", ago(1.0).timestamp()),))))
    snap = replace(snap, parent=replace(snap.parent, start_time=ago(7.0)))
    assert calc(snap, older).overall_progress.eta_seconds == round(4.0 + 12.0 - 10.0 + after)


def test_a_start_up_slower_than_calibrated_waits_at_its_share() -> None:
    """Past its calibrated start-up, a session that has not begun work does not creep on."""
    late = calc(starting("warm", 6.0, parent="RUNNING"), TIMED)
    assert late.overall_progress.percentage == pytest.approx(100 * 2.0 / 12.5, abs=0.01)
    assert late.phases.training.message == "Starting the session"


def test_work_by_the_clock_leaves_the_photos_not_in_flight_to_do() -> None:
    """Embed began 10 s ago (expected 6 s of work), but only 2 done and 2 in flight of 20:
    the 16 not in flight are still to do (4.8 s at the calibrated cost). Its start-up took
    4 s, not the calibrated 2: that is now a fact, and counts as one. A phase at work is
    measured in time: what it has taken, and what is left."""
    counts = Counts(82, 100, fresh=2, active=2, todo=20, work_started=ago(10).timestamp())
    embed = PhaseSnapshot(run=running(12), counts=counts, artifact_updated=ago(1))
    result = calc(starting("warm", 14.0, parent="RUNNING", training=embed), TIMED)
    left = 6.0 * 16 / 20
    training = 14.0 / (14.0 + left)
    assert result.phases.training.progress.percentage == pytest.approx(100 * training, abs=0.01)
    # then faces 1 + 0.1 * 20 and clustering 0.5 + 0.01 * 100
    assert result.overall_progress.percentage == pytest.approx(
        100 * 14.0 / (14.0 + left + 3.0 + 1.5), abs=0.01
    )
    assert result.overall_progress.eta_seconds == round(left + 3.0 + 1.5)


def test_between_batches_the_work_goes_on_at_the_phases_own_pace() -> None:
    """40 of 60 done at a measured 12 a minute, the last 3 s ago, 8 more in flight: 40.6
    done by now, so the bar and the time left move between batches instead of in steps."""
    counts = Counts(82, 100, fresh=40, active=8, todo=60, work_started=ago(20).timestamp(),
                    per_minute=9.0, pace=12.0, last_done=ago(3).timestamp())
    embed = PhaseSnapshot(run=running(22), counts=counts, artifact_updated=ago(3))
    result = calc(starting("warm", 24.0, parent="RUNNING", training=embed), TIMED)
    training = 24.0 / (24.0 + 19.4 * 5.0)  # 24 s taken (start-up 4 s); 5 s a photo to come
    assert result.phases.training.progress.percentage == pytest.approx(100 * training, abs=0.01)
    # time left: 19.4 photos at the measured 12 a minute, then faces (1 + 0.1 * 60) and
    # clustering (0.5 + 0.01 * 100)
    assert result.overall_progress.eta_seconds == pytest.approx(19.4 * 5.0 + 7.0 + 1.5, abs=1)
    later = calc(replace(starting("warm", 26.0, parent="RUNNING", training=embed),
                         now=NOW + timedelta(seconds=2)), TIMED)  # fmt: skip
    assert later.overall_progress.percentage > result.overall_progress.percentage
    assert later.overall_progress.eta_seconds == pytest.approx(
        (result.overall_progress.eta_seconds or 0) - 2, abs=1
    )


def test_the_last_batches_gain_on_the_steady_pace_as_calibrated() -> None:
    """Earlier sessions' last batches beat the steady pace by 0.4 of a batch (they compute
    without the next batch's reads beside them). 40 of 60 done at 12 a minute, in batches
    of 8, so the last holds 4: 20 left is 100 s at that pace, less 0.4 * 4 photos' time
    (8 s). With the last batch alone left, the same."""

    def embed_at(fresh: int) -> PhaseSnapshot:
        counts = Counts(82, 100, fresh=fresh, active=8, todo=60, batch=8,
                        work_started=ago(20).timestamp(), pace=12.0,
                        last_done=NOW.timestamp())  # fmt: skip
        return PhaseSnapshot(run=running(22), counts=counts, artifact_updated=NOW)

    def eta(weights: Weights, fresh: int) -> int | None:
        snap = starting("warm", 24.0, parent="RUNNING", training=embed_at(fresh))
        return calc(snap, weights).overall_progress.eta_seconds

    after = 7.0 + 1.5  # faces 1 + 0.1 * 60, clustering 0.5 + 0.01 * 100
    assert eta(TIMED, 40) == round(20 * 5.0 + after)  # no tail calibrated: the steady pace
    assert eta(TAILED, 40) == round(20 * 5.0 - 0.4 * 4 * 5.0 + after)
    assert eta(TAILED, 56) == round(4 * 5.0 * (1 - 0.4) + after)
    training = calc(starting("warm", 24.0, parent="RUNNING", training=embed_at(40)), TAILED)
    assert training.phases.training.progress.percentage == pytest.approx(
        100 * 24.0 / (24.0 + 20 * 5.0 - 8.0), abs=0.01
    )


def test_the_last_batchs_time_left_counts_down_with_the_clock() -> None:
    """The last batch of 8 (52 of 60 done, after a ramp of 4) computes in 0.6 of a steady
    batch's 40 s, as calibrated: 24 s. Polled 0 s and 10 s after the batch before it
    finished, the time left is 24 s and 14 s, not a gain that shrinks as the batch goes on."""
    after = 7.0 + 1.5  # faces 1 + 0.1 * 60, clustering 0.5 + 0.01 * 100

    def eta(since_last: float) -> int | None:
        counts = Counts(82, 100, fresh=52, active=8, todo=60, batch=8, ramp=4, pace=12.0,
                        work_started=ago(200).timestamp(),
                        last_done=ago(since_last).timestamp())  # fmt: skip
        embed = PhaseSnapshot(run=running(202), counts=counts, artifact_updated=ago(since_last))
        snap = starting("warm", 204.0, parent="RUNNING", training=embed)
        return calc(snap, TAILED).overall_progress.eta_seconds

    assert eta(0.0) == round(24.0 + after)
    assert eta(10.0) == round(14.0 + after)


def test_a_smaller_last_batch_gains_its_share_from_the_first_steady_batch_on() -> None:
    """84 to do: a ramp of 31, three batches of 16, then a last one of 5, which gains 0.4
    of its 5 photos' time (10 s at 12 a minute). As the batch before it ends and it
    starts, the time left goes on from where it was, not from 0."""
    after = 1.0 + 0.1 * 84 + 0.5 + 0.01 * 100  # faces, then clustering

    def eta(fresh: int, active: int, since_last: float) -> int | None:
        counts = Counts(82, 100, fresh=fresh, active=active, todo=84, batch=16, ramp=31,
                        pace=12.0, work_started=ago(400).timestamp(),
                        last_done=ago(since_last).timestamp())  # fmt: skip
        embed = PhaseSnapshot(run=running(402), counts=counts, artifact_updated=ago(since_last))
        snap = starting("warm", 404.0, parent="RUNNING", training=embed)
        return calc(snap, TAILED).overall_progress.eta_seconds

    assert eta(63, 21, 0.0) == round((21 - 0.4 * 5) * 5.0 + after)
    assert eta(63, 21, 70.0) == round((7 - 0.4 * 5) * 5.0 + after)  # the clock's 70 s less
    assert eta(63, 21, 80.0) == eta(79, 5, 0.0) == round((5 - 0.4 * 5) * 5.0 + after)


def test_the_ramped_first_batches_pace_gives_way_to_the_calibrated_one() -> None:
    """2 done (batches of 1 and 1) at a measured 4 a minute, slowed by two batches' fixed
    costs: until the phase's ramp of 31 items is done, the calibrated 0.3 s a photo says
    where the work is, and the time left."""
    counts = Counts(82, 100, fresh=2, active=12, todo=20, work_started=ago(8).timestamp(),
                    pace=4.0, last_done=ago(1.5).timestamp(), ramp=31)
    embed = PhaseSnapshot(run=running(10), counts=counts, artifact_updated=ago(1.5))
    result = calc(starting("warm", 10.0, parent="RUNNING", training=embed), TIMED)
    position = 2 + 1.5 / 0.3  # 7 of 20
    training = 10.0 / (10.0 + (20 - position) * 0.3)
    assert result.phases.training.progress.percentage == pytest.approx(100 * training, abs=0.01)
    assert result.overall_progress.eta_seconds == pytest.approx(
        (20 - position) * 0.3 + 3.0 + 1.5, abs=1
    )


def test_the_steady_pace_is_trusted_over_two_full_batches_not_one() -> None:
    """After a ramp of 31 items, batches of 16 finish at alternating intervals: the pace
    of the first full batch alone (here 24 a minute, against the calibrated 0.3 s a photo,
    200 a minute) says nothing yet. Two batches on, the measured pace says where the work
    is, and the time left."""

    def training_at(fresh: int, pace: float) -> UnifiedProgressResponse:
        counts = Counts(82, 100, fresh=fresh, active=16, todo=100, batch=16, ramp=31,
                        work_started=ago(20).timestamp(), pace=pace,
                        last_done=ago(1.0).timestamp())  # fmt: skip
        embed = PhaseSnapshot(run=running(22), counts=counts, artifact_updated=ago(1.0))
        return calc(starting("warm", 24.0, parent="RUNNING", training=embed), TIMED)

    after = 1.0 + 0.1 * 100 + 0.5 + 0.01 * 100  # faces, then clustering
    one = training_at(47, 24.0)
    position = 47 + 1.0 / 0.3  # at the calibrated pace since the last batch
    assert one.overall_progress.eta_seconds == round((100 - position) * 0.3 + after)
    two = training_at(63, 24.0)
    position = 63 + 24.0 / 60  # at the measured pace since the last batch
    assert two.overall_progress.eta_seconds == round((100 - position) * 60 / 24.0 + after)


def test_a_session_whose_ramp_runs_faster_than_its_calibration_is_told_so() -> None:
    """Earlier sessions took 2.0 s to their first 15 photos (ramped batches of 1, 2, 4
    and 8) and 0.3 s a photo in all; this one took 1.6 s. Until its own steady pace is
    known, the calibrated time left after those 15 is taken as 2.0 / 1.6 times faster. A
    mark earlier sessions reached in under a second (the first batch) says nothing of
    the speed; nor one they never measured."""
    curve = {"training": {1: 0.4, 3: 0.8, 15: 2.0}}
    ramped = session_weights(Calibration(timeline=replace(TIMELINE, ramp_s=curve)), faces=True)
    after = 1.0 + 0.1 * 100 + 0.5 + 0.01 * 100  # faces, then clustering

    def eta(marks: tuple[tuple[int, float], ...], weights: Weights = ramped) -> int | None:
        fresh = marks[-1][0]
        counts = Counts(82, 100, fresh=fresh, active=16, todo=100, batch=16, ramp=31,
                        work_started=ago(marks[-1][1]).timestamp(), ramp_marks=marks,
                        last_done=NOW.timestamp())  # fmt: skip
        embed = PhaseSnapshot(run=running(30), counts=counts, artifact_updated=NOW)
        snap = starting("warm", 32.0, parent="RUNNING", training=embed)
        return calc(snap, weights).overall_progress.eta_seconds

    fast = ((1, 0.3), (3, 0.6), (15, 1.6))
    assert eta(fast, TIMED) == round(85 * 0.3 + after)  # no ramp calibrated
    assert eta(fast) == round((100 * 0.3 - 2.0) * 1.6 / 2.0 + after)
    # 0.8 s to 3 photos: too early to say how fast; the time left is counted from there
    assert eta(fast[:2]) == round(100 * 0.3 - 0.8 + after)
    # 7 was never measured: from the last mark that was, 3, at the rest's calibrated rate
    assert eta(((1, 0.3), (3, 0.6), (7, 1.0))) == round((30 - 0.8) * (1 - 4 / 97) + after)
    # the median over the marks earlier sessions took a second or more to reach
    curve7 = {"training": {7: 1.1, 15: 2.0}}
    median = session_weights(Calibration(timeline=replace(TIMELINE, ramp_s=curve7)), faces=True)
    assert eta(((7, 1.1), (15, 1.6)), median) == round((30 - 2.0) / 1.125 + after)
    # and within bounds: a ramp three times as fast is taken as 1.25 times, one held up
    # three times as long as 0.8
    assert eta(((15, 0.6),)) == round((30 - 2.0) / 1.25 + after)
    assert eta(((15, 6.0),)) == round((30 - 2.0) / 0.8 + after)


def test_the_photos_after_the_ramp_cost_what_earlier_sessions_spent_on_them() -> None:
    """Earlier sessions spent 6 of their 30 s of embedding (100 photos, 0.3 s each on
    average) on their first 15 photos, the ramped batches of 1, 2, 4 and 8: 0.4 s a
    photo. This session, as fast to the same mark, has the other 24 s left, not the 85
    photos' average share of 25.5 s; and, between batches, the time left counts down
    with the clock."""
    curve = {"training": {1: 1.0, 3: 2.0, 7: 3.5, 15: 6.0}}
    weights = session_weights(Calibration(timeline=replace(TIMELINE, ramp_s=curve)), faces=True)
    after = 1.0 + 0.1 * 100 + 0.5 + 0.01 * 100  # faces, then clustering
    marks = ((1, 1.0), (3, 2.0), (7, 3.5), (15, 6.0))

    def at(since_last: float) -> UnifiedProgressResponse:
        counts = Counts(82, 100, fresh=15, active=16, todo=100, batch=16, ramp=31,
                        work_started=ago(6.0 + since_last).timestamp(), ramp_marks=marks,
                        last_done=ago(since_last).timestamp())  # fmt: skip
        embed = PhaseSnapshot(run=running(8 + since_last), counts=counts,
                              artifact_updated=ago(since_last))  # fmt: skip
        return calc(starting("warm", 8.0 + since_last, parent="RUNNING", training=embed), weights)

    now = at(0.0)  # 2 s of start-up, 6 of work, 24 to come
    assert now.overall_progress.eta_seconds == round(24.0 + after)
    assert now.phases.training.progress.percentage == pytest.approx(100 * 8 / 32, abs=0.01)
    later = at(2.0)
    assert later.overall_progress.eta_seconds == round(22.0 + after)
    assert later.phases.training.progress.percentage == pytest.approx(100 * 10 / 32, abs=0.01)


def test_the_time_left_before_the_contract_rounds_it_is_what_its_eta_says() -> None:
    """The session above, 0.3 s after its last batch: 23.7 s of embedding and 12.5 s of
    the rest to come, 36.2 s, which `etaSeconds` gives as 36 (benchmarks measure both)."""
    curve = {"training": {1: 1.0, 3: 2.0, 7: 3.5, 15: 6.0}}
    weights = session_weights(Calibration(timeline=replace(TIMELINE, ramp_s=curve)), faces=True)
    counts = Counts(82, 100, fresh=15, active=16, todo=100, batch=16, ramp=31,
                    work_started=ago(6.3).timestamp(), last_done=ago(0.3).timestamp(),
                    ramp_marks=((1, 1.0), (3, 2.0), (7, 3.5), (15, 6.0)))  # fmt: skip
    embed = PhaseSnapshot(run=running(8.3), counts=counts, artifact_updated=ago(0.3))
    snap = starting("warm", 8.3, parent="RUNNING", training=embed)
    result = calc(snap, weights)
    assert time_left_s(snap, weights, result) == pytest.approx(36.2)
    assert result.overall_progress.eta_seconds == 36
    assert time_left_s(snap, SEED, calc(snap, SEED)) is None  # no timeline: the seed's ETA


def test_files_rejected_before_the_batches_cost_the_rest_no_time() -> None:
    """The session above with 3 unreadable files besides, rejected before any batch: they
    were done at once and at no cost, so the 85 photos past the ramp's 15 have the
    calibrated rest to come. The ramp marks count the batches' own photos; read as counts
    of everything done, they gave the rejects 0.85 s of that rest."""
    curve = {"training": {1: 1.0, 3: 2.0, 7: 3.5, 15: 6.0}}
    weights = session_weights(Calibration(timeline=replace(TIMELINE, ramp_s=curve)), faces=True)
    counts = Counts(85, 103, skipped=3, fresh=18, active=16, todo=103, batch=16, ramp=34,
                    rejected=3, work_started=ago(6.0).timestamp(), last_done=NOW.timestamp(),
                    ramp_marks=((1, 1.0), (3, 2.0), (7, 3.5), (15, 6.0)))  # fmt: skip
    embed = PhaseSnapshot(run=running(8), counts=counts, artifact_updated=NOW)
    result = calc(starting("warm", 8.0, parent="RUNNING", training=embed), weights)
    rest = 0.3 * 103 - 6.0  # 103 photos' calibrated work, less the ramp's 6 s
    worked = 2.0 + 6.0  # start-up and work so far
    expected = 100 * worked / (worked + rest)
    assert result.phases.training.progress.percentage == pytest.approx(expected, abs=0.01)


def test_between_batches_the_pace_stops_at_the_photos_in_flight() -> None:
    counts = Counts(82, 100, fresh=2, active=2, todo=20, work_started=ago(60).timestamp(),
                    pace=12.0, last_done=ago(50).timestamp())
    embed = PhaseSnapshot(run=running(62), counts=counts, artifact_updated=ago(50))
    result = calc(starting("warm", 64.0, parent="RUNNING", training=embed), TIMED)
    training = 64.0 / (64.0 + 16 * 5.0)  # 16 photos not in flight, at the measured pace
    assert result.phases.training.progress.percentage == pytest.approx(100 * training, abs=0.01)


def test_the_pace_is_trusted_after_a_whole_wave_of_batches_past_the_ramp() -> None:
    """Four batches in flight together (Dask): two batches past the ramp are half a wave,
    whose pace says little, and the calibrated time goes on; a whole wave is trusted."""

    def training(wave: int, pace: float, fresh: int = 30) -> float:
        counts = Counts(fresh, 100, fresh=fresh, active=40, todo=100, ramp=10, batch=10,
                        pace=pace, wave=wave, work_started=ago(30).timestamp(),
                        last_done=NOW.timestamp())  # fmt: skip
        embed = PhaseSnapshot(run=running(32), counts=counts, artifact_updated=NOW)
        result = calc(starting("warm", 34.0, parent="RUNNING", training=embed), TIMED)
        return result.phases.training.progress.percentage

    calibrated = training(4, 0.0)
    assert training(4, 600.0) == calibrated != training(2, 600.0)
    assert training(4, 600.0, fresh=50) != training(4, 0.0, fresh=50)


def test_between_waves_the_work_goes_on_from_the_last_whole_wave() -> None:
    """Two batches in flight end 2 s, then 8 s apart. The pace, 2 photos a second, is
    counted to the last whole wave's end (30 photos, 8 s ago), and the work goes on from
    there: 46 done by now, 27 s left. Going on from the batch that ended 2 s ago, just
    after the wave (40), the bar ran ahead of the work."""
    counts = Counts(40, 100, fresh=40, active=20, todo=100, ramp=10, batch=10, pace=120.0,
                    work_started=ago(30).timestamp(), last_done=ago(2).timestamp(),
                    wave_done=30, wave_at=ago(8).timestamp())  # fmt: skip
    embed = PhaseSnapshot(run=running(32), counts=counts, artifact_updated=ago(2))
    result = calc(starting("warm", 34.0, parent="RUNNING", training=embed), TIMED)
    worked = 4.0 + 30.0  # start-up and work so far
    training = worked / (worked + (100 - 46) / 2.0)
    assert result.phases.training.progress.percentage == pytest.approx(100 * training, abs=0.01)


def test_the_faces_phase_costs_as_many_faces_as_the_embed_phase_found() -> None:
    """The faces phase's cost a photo (0.1 s) was calibrated on photos with half a face
    each. This session's embed phase found a face in every photo it looked in (96): weighed
    against the calibration as 32 photos, (96 + 16) / 128 = 0.875 a photo, 1.75 times as
    many; the faces' share of the cost (0.5) grows by that, so its 100 photos are 3.75 s
    more work. As many faces as calibrated change nothing, nor do faces counted against a
    calibration that found none."""
    found_rate = replace(TIMELINE, found_rate={"faceDetection": 0.5})

    def eta(found: int, timeline: Timeline = found_rate) -> int | None:
        counts = Counts(96, 100, fresh=96, active=4, todo=100, ramp=10, batch=16, pace=120.0,
                        work_started=ago(40).timestamp(), last_done=NOW.timestamp(),
                        looked=96, found=found)  # fmt: skip
        embed = PhaseSnapshot(run=running(42), counts=counts, artifact_updated=NOW)
        weights = session_weights(Calibration(timeline=timeline), faces=True)
        return calc(starting("warm", 44.0, parent="RUNNING", training=embed),
                    weights).overall_progress.eta_seconds  # fmt: skip

    as_calibrated, plain = eta(48), eta(48, TIMELINE)
    assert as_calibrated is not None and as_calibrated == plain == eta(96, TIMELINE)
    more = eta(96)
    assert more is not None and abs(more - as_calibrated - 3.75) <= 1  # in whole seconds


def test_a_finished_phase_counts_as_long_as_it_took() -> None:
    """Embed took 5 s in all, not the calibrated 8: the rest of the session is the rest."""
    done = Counts(100, 100, fresh=20, todo=20, done=True, work_started=ago(9).timestamp())
    embed = PhaseSnapshot(run=RunState("COMPLETED", ago(9.5), ago(5), ago(5)), counts=done,
                          artifact_updated=ago(5))  # fmt: skip
    result = calc(starting("warm", 10.0, parent="RUNNING", training=embed), TIMED)
    # 5 s done; faces: 5 s into its expected 1 + 2 s, so waiting at its overhead's end
    # (no batch yet); clustering 1.5 s to come
    assert result.phases.training.progress.percentage == 100
    assert result.weights.training == pytest.approx(5.0 / (5.0 + 3.0 + 1.5), abs=1e-4)


def test_a_phase_with_nothing_new_counts_only_its_overhead() -> None:
    session = starting("warm", 3.0, parent="RUNNING")
    nothing = SessionSnapshot(**{**session.__dict__, "session": Counts(0, 100, todo=0)})
    result = calc(nothing, TIMED)
    # training 2 s, faces 1 s, clustering 0.5 + 1 s: 4.5 s in all, 2 of them done
    assert result.overall_progress.percentage == pytest.approx(100 * 2.0 / 4.5, abs=0.01)
