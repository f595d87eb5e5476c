"""The progress reporter: throttled updates, a heartbeat while nothing finishes, and a
Prefect outage that costs progress updates but never the work."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from tasks import progress
from tasks.progress import TAIL_BOUNDS, Counts, ProgressReporter, tail_batches
from tests.tasks.conftest import Recorder

Marks = list[tuple[float, int, float]]


def test_a_phase_that_finishes_nothing_for_a_while_still_beats(recorder: Recorder) -> None:
    reporter = ProgressReporter("cluster", total=1, heartbeat_s=0.1)
    reporter.start()
    time.sleep(1.0)
    assert len(recorder.updates) >= 1, "the heartbeat published while nothing finished"
    reporter.finish()
    finished = len(recorder.updates)
    time.sleep(0.5)
    assert len(recorder.updates) == finished, "no beats after finish"
    assert recorder.updates[-1][1] == Counts(1, 1, done=True, per_minute=0.0)


def test_counts_carry_work_in_flight_and_what_this_run_did(recorder: Recorder) -> None:
    reporter = ProgressReporter("embed", total=10, interval_s=0.0, heartbeat_s=60)
    reporter.start()
    reporter.current = 4  # reused from an earlier run
    reporter.active = 3
    reporter.advance(processed=2, skipped=1)
    reporter.stop()
    last = recorder.updates[-1][1]
    assert last is not None
    assert (last.current, last.total, last.skipped, last.active, last.fresh) == (7, 10, 1, 3, 3)


def test_prefect_down_costs_updates_not_work(monkeypatch: pytest.MonkeyPatch) -> None:
    rec = Recorder(fail=True).install(monkeypatch)
    reporter = ProgressReporter("faces", total=2, interval_s=0.0, heartbeat_s=60)
    reporter.start()
    reporter.advance(processed=1)
    rec.fail = False  # the server is back: the next update creates the artifact
    reporter.finish()
    assert rec.updates and rec.updates[-1][1] is not None and rec.updates[-1][1].done


def test_the_first_results_are_published_at_once_then_throttled(recorder: Recorder) -> None:
    reporter = ProgressReporter("embed", total=10, interval_s=60.0, heartbeat_s=60)
    reporter.start()
    reporter.reject(2)  # refused files: counted, but they are no results
    rejected = recorder.published(1, within_s=0.5)
    assert rejected is not None and rejected.skipped == 2 and rejected.last_done == 0.0
    reporter.advance(processed=1)
    first = recorder.published(2, within_s=0.5)
    assert first is not None and first.fresh == 3 and first.last_done > 0
    assert first.pace == 0.0, "one batch says nothing of the pace"
    time.sleep(0.2)
    reporter.advance(processed=2)
    time.sleep(0.3)
    assert len(recorder.updates) == 2, "later results wait for the throttle"
    reporter.stop()
    held = recorder.published(3, within_s=0.5)
    assert held is not None and held.fresh == 5, "the phase's end sends what was held"


def test_results_held_by_the_throttle_are_published_when_it_allows(recorder: Recorder) -> None:
    """A batch that finishes just after a publish shows within the throttle's interval, not
    with the next batch (the bar used to stand still for seconds between the first ones)."""
    reporter = ProgressReporter("embed", total=10, interval_s=0.4, heartbeat_s=60)
    reporter.start()
    reporter.advance(processed=1)  # the first results: published at once
    first = recorder.published(1, within_s=0.2)
    assert first is not None and first.current == 1
    reporter.advance(processed=2)  # held by the throttle
    time.sleep(0.1)
    assert len(recorder.updates) == 1
    held = recorder.published(2, within_s=2.0)
    assert held is not None and held.current == 3, "the held results were published"
    time.sleep(0.6)
    assert len(recorder.updates) == 2, "nothing new: no more publishes before the heartbeat"
    reporter.stop()


def test_the_pace_runs_from_the_first_results_to_the_last(recorder: Recorder) -> None:
    reporter = ProgressReporter("embed", total=10, interval_s=0.0, heartbeat_s=60)
    reporter.start()
    reporter.reject(5)
    time.sleep(0.3)  # start-up, and the refused files, are not in the pace
    reporter.advance(processed=1)
    time.sleep(0.2)
    reporter.advance(processed=2)
    time.sleep(0.3)  # nothing finished since: the pace holds, it does not decay
    n = len(recorder.updates)
    reporter.publish()
    counts = recorder.published(n + 1)
    reporter.stop()
    assert counts is not None
    assert counts.pace == pytest.approx(60.0 * 2 / 0.2, rel=0.3)
    assert time.time() - counts.last_done == pytest.approx(0.3, abs=0.15)


@pytest.mark.parametrize(
    ("todo", "size", "ramp"),
    [(100, 16, 31), (20, 16, 20), (100, 4, 7), (100, 1, 1), (0, 16, 0)],
)
def test_the_ramp_is_the_small_batches_and_the_first_full_one(
    todo: int, size: int, ramp: int
) -> None:
    from tasks.phase import ramp_items, ramped_chunks

    assert ramp_items(ramped_chunks(list(range(todo)), size), size) == ramp


def test_counts_read_back_as_published() -> None:
    counts = Counts(5, 20, skipped=1, failed=1, per_minute=3.0, active=4, fresh=3, todo=18,
                    work_started=1.5, stage="loading", last_done=2.5, pace=6.0,
                    ramp=31, batch=16, tail=0.35,
                    ramp_marks=((1, 0.25), (3, 0.5), (7, 1.125)), rejected=1,
                    wave_done=2, wave_at=2.25, looked=4, found=3,
                    stage_at=(("scanning", 0.5), ("loading", 1.25)))  # fmt: skip
    assert Counts.parse(counts.describe()) == counts
    assert Counts.parse(replace(counts, ramp_marks=()).describe()) == replace(counts, ramp_marks=())
    assert Counts.parse(replace(counts, tail=None).describe()) == replace(counts, tail=None)
    assert Counts.parse("current=1 total=2") == Counts(1, 2)  # an older artifact


def test_the_stages_before_the_work_say_when_each_began(
    recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A phase created scanning at 100 s, loading its model from 102.5 s: both published
    with their times (the milestones of a session's start-up), once each, and kept once
    the work began."""
    clock = Clock()
    clock.time = lambda: 100.0 + clock.now
    monkeypatch.setattr(progress, "time", clock)
    reporter = ProgressReporter("embed", total=4, interval_s=0.0, heartbeat_s=60,
                                stage="scanning")  # fmt: skip
    clock.now = 2.5
    reporter.set_stage("loading")
    reporter.set_stage("loading")
    clock.now = 4.0
    reporter.begin_work()
    reporter.advance(processed=4)
    reporter.finish()
    assert recorder.updates[-1][1] is not None
    assert recorder.updates[-1][1].stage_at == (("scanning", 100.0), ("loading", 102.5))
    assert ProgressReporter("cluster", total=1).counts().stage_at == ()


def test_the_tail_is_how_much_sooner_the_phase_ended_than_its_steady_pace_said() -> None:
    """Batches of 10 at 60 a minute (10 s a batch), 50 to do. Seen from the batches that
    left a full batch or more to do, the phase should have ended at 50 s; it ended at
    46 s, its last batch computing without the next one's reads beside it: 0.4 of a batch.
    The batch that left less than a batch to do says nothing of it."""
    marks = [(20.0, 20, 60.0), (30.0, 30, 60.0), (40.0, 40, 60.0), (45.0, 45, 60.0)]
    assert tail_batches(marks, end=46.0, todo=50, batch=10) == pytest.approx(0.4)
    # the median of the last batches with 1 to 3 full batches left (0.3, 0.4, 0.5): not
    # the one with under a batch left (0.49), nor one further from the end (0.7)
    window = [(19.0, 20, 60.0), (30.0, 30, 60.0), (41.0, 40, 60.0)]
    under, far = (45.9, 45, 60.0), (13.0, 10, 60.0)
    assert tail_batches([far, *window, under], end=46.0, todo=50, batch=10) == pytest.approx(0.4)
    # the median: one batch held up by a refused write does not set it
    odd = [(20.0, 20, 60.0), (33.0, 30, 46.0), (40.0, 40, 60.0)]
    assert tail_batches(odd, end=46.0, todo=50, batch=10) == pytest.approx(0.4)
    # a phase slower at its end is told so, within bounds
    assert tail_batches(marks, end=80.0, todo=50, batch=10) == TAIL_BOUNDS[0]
    assert tail_batches(marks, end=30.0, todo=50, batch=10) == TAIL_BOUNDS[1]
    # nothing measured at the steady pace: no tail, not a tail of 0
    assert tail_batches([(45.0, 45, 60.0)], end=46.0, todo=50, batch=10) is None
    assert tail_batches([], end=46.0, todo=50, batch=10) is None


def test_with_batches_in_waves_the_tail_is_measured_over_as_many_waves() -> None:
    """Marks at the ends of waves of two batches of 10 (each counted twice, once by the
    batch that ended the wave and once by the one after), 1 item a second, 100 to do,
    ended at 96 s: the waves 60, 40 and 20 items from the end say 0.3, 0.4 and 0.5 of a
    batch. Over three waves, the median is 0.4; over three batches, only the last wave."""
    marks = [(m, n, 60.0) for m, n in ((41.0, 40), (60.0, 60), (79.0, 80)) for _ in (1, 2)]
    assert tail_batches(marks, end=96.0, todo=100, batch=10, wave=2) == pytest.approx(0.4)
    assert tail_batches(marks, end=96.0, todo=100, batch=10) == pytest.approx(0.3)


def drifting_marks(todo: int, batch: int, drift: float, tail: float) -> tuple[Marks, float]:
    """A phase's steady marks (the reporter's pace since its first batch) when each batch
    takes `drift` longer than the one before, and when its last batch ended: `tail` of a
    batch's time sooner than the one before it."""
    t, n, k, marks = 0.0, 0, 0, []
    start: tuple[float, int] | None = None
    while n < todo - batch:
        t, n, k = t + 10.0 * (1 + drift) ** k, n + batch, k + 1
        if start is None:
            start = (t, n)
            continue
        marks.append((t, n, 60.0 * (n - start[1]) / (t - start[0])))
    return marks, t + 10.0 * (1 + drift) ** k * (1 - tail)


def test_the_tail_is_measured_near_the_end_of_a_phase_whose_pace_drifts() -> None:
    """1,000 items in batches of 10, each 0.1 % slower than the one before: the batches
    far from the end say the phase should have ended much later (or sooner) than the
    last ones do. The tail is measured on the last few."""
    steady, end = drifting_marks(1000, 10, drift=0.0, tail=0.4)
    assert tail_batches(steady, end, todo=1000, batch=10) == pytest.approx(0.4)
    for drift in (0.001, -0.001):
        marks, end = drifting_marks(1000, 10, drift=drift, tail=0.4)
        assert tail_batches(marks, end, todo=1000, batch=10) == pytest.approx(0.4, abs=0.1)


class Clock:
    """The reporter's `time` module, with a monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 0.0
        self.time = time.time

    def monotonic(self) -> float:
        return self.now


def test_the_tail_is_published_with_the_phases_last_counts_only(
    recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """6 to do in batches of 2, the ramp the first 2 items (1 at 1 s, 1 at 3 s), the
    steady pace 1 item a second (2 more at 5 s). The steady pace says the phase ends at
    7 s; its last batch ends at 6.2 s: 0.4 of a batch sooner. The batch that ended the
    ramp measured the ramp's pace, not the steady one: it is no mark (it would say 1.2)."""
    clock = Clock()
    monkeypatch.setattr(progress, "time", clock)
    reporter = ProgressReporter("embed", total=6, interval_s=0.0, heartbeat_s=60, ramp=2,
                                batch=2, todo=6)  # fmt: skip
    for now, n in ((1.0, 1), (3.0, 1), (5.0, 2), (6.2, 2)):
        clock.now = now
        reporter.advance(processed=n)
        assert reporter.counts().tail is None, "only the last counts say the tail"
    reporter.finish()
    last = recorder.updates[-1][1]
    assert last is not None and last.done and last.batch == 2
    assert last.tail == pytest.approx(0.4)


def test_the_steady_pace_is_counted_over_whole_waves_of_batches(
    recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two batches of 10 in flight after a ramp of 10: they end 2 s, then 8 s apart (one
    read while the other computed), 2 items a second over each wave of two. Counted to
    each batch's end, the pace swung from 120 to 150 a minute and back; counted to the
    last whole wave's end it holds, and the work goes on from there."""
    clock = Clock()
    monkeypatch.setattr(progress, "time", clock)
    reporter = ProgressReporter("embed", total=60, interval_s=0.0, heartbeat_s=60, ramp=10,
                                batch=10, todo=60, wave=2)  # fmt: skip
    paces, waves = [], []
    for now in (10.0, 12.0, 20.0, 22.0, 30.0):
        clock.now = now
        reporter.advance(processed=10)
        counts = reporter.counts()
        paces.append(counts.pace)
        waves.append((counts.wave_done, round(counts.last_done - counts.wave_at, 3)))
    # the ramp's end; one steady batch, no whole wave yet (to its end); then whole waves
    assert paces == [0.0, pytest.approx(300.0), *[pytest.approx(120.0)] * 3]
    assert waves[2:] == [(30, 0.0), (30, 2.0), (50, 0.0)]
    assert waves[0][0] == waves[1][0] == 0  # no whole wave yet
    assert counts.wave == 2
    reporter.stop()


def test_the_ramped_batches_ends_are_published_from_the_first_batch_in_flight(
    recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ramp of 3 (1 item, then 2): its batches ended 1.5 and 3.5 s after the first
    went in flight, and are published with the counts from then on; the steady batch
    after them is no ramp mark."""
    clock = Clock()
    monkeypatch.setattr(progress, "time", clock)
    reporter = ProgressReporter("embed", total=5, interval_s=0.0, heartbeat_s=60, ramp=3,
                                batch=2, todo=5)  # fmt: skip
    clock.now = 10.0
    reporter.begin_work()
    for now, n in ((11.5, 1), (13.5, 2), (14.5, 2)):
        clock.now = now
        reporter.advance(processed=n)
    assert reporter.counts().ramp_marks == ((1, 1.5), (3, 3.5))
    reporter.finish()
    last = recorder.updates[-1][1]
    assert last is not None and last.ramp_marks == ((1, 1.5), (3, 3.5))


def test_ramp_marks_count_the_batches_items_not_the_files_rejected_before_them(
    recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two files refused before any batch count as done, but a session with other
    rejects must compare its ramp with this one's: the marks count the batches' items."""
    clock = Clock()
    monkeypatch.setattr(progress, "time", clock)
    reporter = ProgressReporter("embed", total=7, interval_s=0.0, heartbeat_s=60, ramp=2 + 3,
                                batch=2, todo=7)  # fmt: skip
    reporter.reject(2)
    reporter.begin_work()
    for now, n in ((1.5, 1), (3.5, 2)):
        clock.now = now
        reporter.advance(processed=n)
    assert reporter.counts().ramp_marks == ((1, 1.5), (3, 3.5))
    assert reporter.counts().rejected == 2 and reporter.counts().fresh == 5
    reporter.stop()


def test_the_pace_leaves_out_the_ramped_first_batches_once_one_more_has_finished(
    recorder: Recorder,
) -> None:
    """Small first batches each pay a batch's fixed costs: the steady pace starts after
    them (here the first 3 items), so the time left is not too long."""
    reporter = ProgressReporter("embed", total=10, interval_s=0.0, heartbeat_s=60, ramp=3)
    reporter.start()
    reporter.advance(processed=1)
    time.sleep(0.6)  # the slow ramp: 2 more in 0.6 s
    reporter.advance(processed=2)
    ramp_only = recorder.published(2)
    time.sleep(0.2)  # then 4 in 0.2 s
    reporter.advance(processed=4)
    counts = recorder.published(3)
    reporter.stop()
    assert ramp_only is not None and counts is not None
    assert ramp_only.pace == pytest.approx(60.0 * 2 / 0.6, rel=0.35)  # nothing after it yet
    assert counts.pace == pytest.approx(60.0 * 4 / 0.2, rel=0.35)  # not 6 in 0.8 s


def test_finish_is_sent_in_place_of_the_counts_the_throttle_held(recorder: Recorder) -> None:
    reporter = ProgressReporter("embed", total=3, interval_s=60.0, heartbeat_s=60)
    reporter.start()
    reporter.advance(processed=1)  # the first results: published at once
    assert recorder.published(1, within_s=0.5) is not None
    reporter.advance(processed=2)  # held by the throttle
    reporter.finish()
    assert len(recorder.updates) == 2, "the held counts were superseded, not sent first"
    last = recorder.updates[-1][1]
    assert last is not None and last.done and last.current == 3


def test_finish_is_sent_by_a_reporter_whose_thread_never_started(recorder: Recorder) -> None:
    reporter = ProgressReporter("cluster", total=2)
    reporter.finish()
    assert recorder.updates and recorder.updates[-1][1] is not None
    assert recorder.updates[-1][1].done and recorder.updates[-1][1].current == 2
