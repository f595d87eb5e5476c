"""The same folder submitted twice at once: one session indexes, the other is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from photoindex.settings import Settings, get_settings
from tasks.lock import LibraryBusy, library_holder
from tests.environ import environ
from tests.resilience.conftest import Clean
from tests.resilience.helpers import (
    assert_healthy,
    assert_same_as_clean,
    child_env,
    count_rows,
    flow_run_state,
    snapshot,
    start_child_session,
    wait_until,
)

pytestmark = pytest.mark.usefixtures("prefect_harness", "data_dir")

BUSY = "is already indexing into"


def test_two_sessions_at_once(clean: Clean, prefect_api_url: str, tmp_path: Path) -> None:
    """Two sessions started together: one fails LibraryBusy, a third submit is refused."""
    data = tmp_path / "data"
    env = {"PHOTOINDEX_CLIP_BATCH_SIZE": "2"}  # long enough to submit a third meanwhile
    # Both created and started at the same moment, past submit_session's early check.
    first = start_child_session(clean.folder, data, prefect_api_url, **env)
    second = start_child_session(clean.folder, data, prefect_api_url, **env)
    sessions = {first.session_id: first, second.session_id: second}
    settings = Settings(data_dir=data)
    try:
        winner = wait_until(
            lambda: next(
                (s for sid, s in sessions.items() if str(sid) in (library_holder(settings) or "")),
                None,
            ),
            240,
            "a session to take the lock",
        )
        loser = second if winner is first else first
        # While it runs, the product's submit refuses at once, naming the running session.
        with environ(**child_env(data, prefect_api_url)):
            get_settings.cache_clear()
            from photoindex.launch import submit_session

            with pytest.raises(LibraryBusy) as refused:
                submit_session(clean.folder)
        get_settings.cache_clear()
        assert BUSY in str(refused.value) and str(winner.session_id) in str(refused.value)
        assert loser.wait(240) != 0, loser.log  # it met the lock: the two overlapped
        assert winner.wait(240) == 0, winner.log
    finally:
        first.stop()
        second.stop()

    assert flow_run_state(winner.session_id)[0] == "COMPLETED"
    state, message = flow_run_state(loser.session_id)
    assert state == "FAILED" and message and BUSY in message, (state, message)
    assert "LibraryBusy" in loser.log and BUSY in loser.log

    # One writer: each item's status written once (two writers would both write every key).
    parts = str(settings.catalog_dir / "status" / "*.parquet")
    raw = count_rows(settings, "SELECT count(*) AS n FROM read_parquet(?)", (parts,))
    assert raw == count_rows(settings, "SELECT count(*) AS n FROM status")
    assert_same_as_clean(snapshot(settings), clean.snapshot)
    assert_healthy(settings)
