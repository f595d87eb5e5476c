"""A session process killed mid-phase: the API says so, and a re-run finishes the job exactly."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from api.prefect_reader import PrefectReader
from photoindex.settings import Settings
from tests.resilience.conftest import Clean
from tests.resilience.helpers import (
    assert_healthy,
    assert_same_as_clean,
    child_run_states,
    count_rows,
    flow_run_state,
    index_in_process,
    overall_status,
    snapshot,
    start_child_session,
    use_data_dir,
    wait_until,
)

pytestmark = pytest.mark.usefixtures("prefect_harness", "data_dir")

STARTUP_S = 240.0  # a session process imports torch and Prefect: slow on a busy 2-core machine


def _phase_rows(settings: Settings, phase: str) -> int:
    return count_rows(settings, "SELECT count(*) AS n FROM status WHERE phase = ?", (phase,))


def test_sigkill_in_the_face_phase(clean: Clean, prefect_api_url: str, tmp_path: Path) -> None:
    """SIGKILL during faces: stalled, then failed in the API; a re-run equals a clean run."""
    # One photo per face batch, so the phase lasts long enough to be caught in the middle.
    env = {"PHOTOINDEX_FACE_BATCH_SIZE": "1", "PHOTOINDEX_CLIP_BATCH_SIZE": "4"}
    child = start_child_session(clean.folder, tmp_path / "data", prefect_api_url, **env)
    total = len(clean.snapshot.indexed)
    try:
        wait_until(
            lambda: _phase_rows(child.settings, "faces") >= 2,
            STARTUP_S,
            "the face phase to record its first photos",
        )
        child.signal(signal.SIGKILL)
        assert child.proc.wait(10) == -signal.SIGKILL
    finally:
        child.stop()
    done = _phase_rows(child.settings, "faces")
    assert done < total, "the face phase had finished before the kill: nothing was interrupted"

    # Prefect never learns of a SIGKILL: the runs stay Running. The API must judge by silence.
    assert flow_run_state(child.session_id)[0] == "RUNNING"
    assert child_run_states(child.session_id)["detect-faces"] == "RUNNING"
    reader_settings = Settings(prefect_api_url=prefect_api_url, stall_after_s=1.0, fail_after_s=4)
    reader = PrefectReader(reader_settings, cache_ttl_s=0, calibration_sessions=0)
    seen: list[str] = []

    def failed() -> bool:
        seen.append(overall_status(reader, child.session_id))
        return seen[-1] == "failed"

    wait_until(failed, 30, "the API to report the killed session failed", interval=0.3)
    assert "stalled" in seen, seen
    after_stall = seen[seen.index("stalled") :]
    assert set(after_stall) <= {"stalled", "failed"}, seen
    assert flow_run_state(child.session_id)[0] == "RUNNING"  # still, in Prefect

    with use_data_dir(child.settings.data_dir, **env) as settings:
        embed, faces, _cluster = index_in_process(clean.folder)
        assert embed.processed == 0 and embed.reused == total
        assert faces.reused == done and faces.processed == total - done
        after = snapshot(settings)
        assert_healthy(settings)
    assert after.raw_face_rows >= len(after.faces)  # rewritten rows collapse to one per face
    assert_same_as_clean(after, clean.snapshot)


def test_sigterm_in_the_embed_phase(clean: Clean, prefect_api_url: str, tmp_path: Path) -> None:
    """SIGTERM during embed: Crashed in Prefect, failed in the API; a re-run equals a clean run."""
    env = {"PHOTOINDEX_CLIP_BATCH_SIZE": "1"}
    child = start_child_session(clean.folder, tmp_path / "data", prefect_api_url, **env)
    total = len(clean.snapshot.indexed)
    try:
        wait_until(
            lambda: _phase_rows(child.settings, "embed") >= 2,
            STARTUP_S,
            "the embed phase to record its first photos",
        )
        child.signal(signal.SIGTERM)
        code = child.wait(60)
    finally:
        child.stop()
    done = _phase_rows(child.settings, "embed")
    assert done < total, "the embed phase had finished before SIGTERM: nothing was interrupted"
    assert code != 0, child.log

    state, message = flow_run_state(child.session_id)
    assert state in {"CRASHED", "CANCELLED"}, (state, message)
    assert child_run_states(child.session_id)["embed-images"] in {"CRASHED", "CANCELLED"}
    assert "detect-faces" not in child_run_states(child.session_id)
    reader = PrefectReader(
        Settings(prefect_api_url=prefect_api_url), cache_ttl_s=0, calibration_sessions=0
    )
    assert overall_status(reader, child.session_id) in {"failed", "cancelled"}

    with use_data_dir(child.settings.data_dir, **env) as settings:
        embed, faces, _cluster = index_in_process(clean.folder)
        assert embed.reused == done and embed.processed == total - done
        assert faces.processed == total
        after = snapshot(settings)
        assert_healthy(settings)
    assert_same_as_clean(after, clean.snapshot)
