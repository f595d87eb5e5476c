"""End to end: the progress API over real flow runs in the Prefect test harness."""

from __future__ import annotations

import asyncio
import threading
import time
from uuid import UUID, uuid4

from fastapi.testclient import TestClient

from api.app import create_app
from api.prefect_reader import PrefectReader, get_unified_progress
from photoindex.settings import Settings
from tests.api.conftest import Progress, progress_of, wait_for
from tests.api.drivable import Driver
from tests.loopback import LOOPBACK


def phase_current(key: str, value: int) -> object:
    return lambda p: p["phases"][key]["progress"]["current"] == value


def test_seed_cases_against_real_runs(api: TestClient) -> None:
    """The seed's three cases, hit exactly by a driven session."""
    driver = Driver(images=100, face_items=100)
    sid = driver.start()
    driver.advance("embed", 50)
    p = wait_for(api, sid, lambda p: p["phases"]["training"]["progress"]["current"] == 50)
    assert p["sessionId"] == str(sid)
    assert p["overallProgress"]["percentage"] == 15.0
    assert p["overallProgress"]["currentPhase"] == "training"
    assert p["overallStatus"] == "running"
    assert p["phases"]["training"]["status"] == "running"
    assert p["phases"]["faceDetection"]["status"] == "pending"
    assert p["weightsSource"] == "seed-default"

    driver.finish("embed")
    driver.advance("faces", 50)
    p = wait_for(api, sid, lambda p: p["phases"]["faceDetection"]["progress"]["current"] == 50)
    assert p["overallProgress"]["percentage"] == 62.5
    assert p["overallProgress"]["currentPhase"] == "face_detection"
    assert p["phases"]["training"]["status"] == "completed"
    assert p["phases"]["faceDetection"]["status"] == "processing"

    driver.finish("faces")
    driver.finish("cluster")
    p = wait_for(api, sid, lambda p: p["overallStatus"] != "running")
    assert p["overallStatus"] == "completed"
    assert p["overallProgress"]["percentage"] == 100.0
    assert p["overallProgress"]["currentPhase"] == "completed"
    for key in ("training", "faceDetection", "clustering"):
        assert p["phases"][key]["status"] == "completed"
        assert p["phases"][key]["completedAt"] is not None
    assert p["phases"]["clustering"]["progress"]["total"] == 4

    legacy = api.get(f"/api/v1/training/sessions/{sid}/progress").json()
    assert legacy["status"] == "completed" and legacy["progress"]["percentage"] == 100.0
    faces = api.get(f"/api/v1/face-sessions/{sid}").json()
    assert faces["status"] == "completed"
    assert faces["clustering"]["status"] == "completed"
    # The CLI's entry point: the same calculation outside FastAPI, one event loop per call.
    for _ in range(2):
        direct = asyncio.run(get_unified_progress(sid))
        assert direct.overall_status == "completed"
        assert direct.overall_progress.percentage == 100.0
    # A phase's own flow run is no session.
    child = asyncio.run(a_child_run(sid))
    response = api.get(f"/api/v1/training/sessions/{child}/progress-unified")
    assert response.status_code == 404
    assert "not an index-photos run" in response.json()["detail"]


async def a_child_run(session_id: UUID) -> UUID:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    flt = FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[session_id]))
    async with get_client() as client:
        return (await client.read_flow_runs(flow_run_filter=flt))[0].id


def test_polling_sees_monotonic_progress_until_completed(api: TestClient) -> None:
    """A client polling throughout sees percentages that never fall, ending at 100."""
    driver = Driver(images=40, face_items=40, cluster_items=10)
    sid = driver.start()
    seen: list[Progress] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            seen.append(progress_of(api, sid))
            if seen[-1]["overallStatus"] in {"completed", "failed", "cancelled"}:
                return
            time.sleep(0.05)

    poller = threading.Thread(target=poll)
    poller.start()
    for phase, total in (("embed", 40), ("faces", 40), ("cluster", 10)):
        for step in range(total // 4, total + 1, total // 4):
            driver.advance(phase, step)
            time.sleep(0.15)
        driver.finish(phase)
    poller.join(60)
    stop.set()
    percentages = [p["overallProgress"]["percentage"] for p in seen]
    assert seen[-1]["overallStatus"] == "completed"
    assert percentages == sorted(percentages), percentages
    assert percentages[-1] == 100.0
    assert all(x < 100.0 for x in percentages[:-1])
    assert len(set(percentages)) >= 8, "the poller should have seen the progress move"


def test_failing_face_phase_fails_the_session(api: TestClient) -> None:
    """A face phase that raises: overall failed, training stays completed."""
    driver = Driver(images=20, face_items=20)
    sid = driver.start()
    driver.finish("embed")
    driver.advance("faces", 5)
    driver.fail("faces")
    assert driver.ended.wait(30)
    p = wait_for(api, sid, lambda p: p["overallStatus"] == "failed")
    assert p["phases"]["training"]["status"] == "completed"
    assert p["phases"]["faceDetection"]["status"] == "failed"
    assert p["phases"]["clustering"]["status"] == "skipped"
    assert p["overallProgress"]["currentPhase"] == "face_detection"
    assert p["overallProgress"]["percentage"] < 100.0
    assert any("exploded on purpose" in w for w in p["warnings"])
    assert driver.outcome == "FAILED"


def test_skip_face_detection_renormalises(api: TestClient) -> None:
    """Without faces, training carries the whole percentage and the rest is skipped."""
    driver = Driver(images=10, faces=False)
    sid = driver.start()
    driver.advance("embed", 5)
    p = wait_for(api, sid, phase_current("training", 5))  # type: ignore[arg-type]
    assert p["overallProgress"]["percentage"] == 50.0
    assert p["weights"] == {"training": 1.0, "faceDetection": 0.0, "clustering": 0.0}
    assert p["phases"]["faceDetection"]["status"] == "skipped"
    driver.run_to_end()
    p = wait_for(api, sid, lambda p: p["overallStatus"] == "completed")
    assert p["overallProgress"]["percentage"] == 100.0
    assert p["phases"]["clustering"]["status"] == "skipped"


def test_pause_waits_in_prefect_paused_state_and_resumes(api: TestClient) -> None:
    """Pause: the phase waits in Paused between batches; resume carries on where it stopped."""
    driver = Driver(images=100, face_items=10)
    sid = driver.start()
    driver.advance("embed", 20)
    answer = api.post(f"/api/v1/training/sessions/{sid}/pause")
    assert answer.status_code == 200, answer.text
    assert answer.json()["action"] == "pause"
    p = wait_for(api, sid, lambda p: p["overallStatus"] == "paused")
    assert p["phases"]["training"]["status"] == "paused"
    assert p["phases"]["training"]["progress"]["current"] == 20
    assert p["overallProgress"]["etaSeconds"] is None

    answer = api.post(f"/api/v1/training/sessions/{sid}/resume")
    assert answer.status_code == 200, answer.text
    p = wait_for(api, sid, lambda p: p["overallStatus"] == "running")
    driver.advance("embed", 60)
    p = wait_for(api, sid, lambda p: p["phases"]["training"]["progress"]["current"] == 60)
    assert p["phases"]["training"]["status"] == "running"
    driver.run_to_end()
    p = wait_for(api, sid, lambda p: p["overallStatus"] == "completed")
    assert p["overallProgress"]["percentage"] == 100.0


def test_cancel_ends_the_session_cancelled(api: TestClient) -> None:
    """Cancel: the running phase stops at its next checkpoint and everything ends Cancelled."""
    driver = Driver(images=100)
    sid = driver.start()
    driver.advance("embed", 10)
    answer = api.post(f"/api/v1/training/sessions/{sid}/cancel")
    assert answer.status_code == 200, answer.text
    assert answer.json()["overallStatus"] in {"cancelling", "cancelled"}
    assert driver.ended.wait(30)
    p = wait_for(api, sid, lambda p: p["overallStatus"] == "cancelled")
    assert p["phases"]["training"]["status"] == "cancelled"
    assert p["phases"]["faceDetection"]["status"] == "cancelled"
    assert p["overallProgress"]["percentage"] == 3.0
    assert driver.outcome == "CANCELLED"
    again = api.post(f"/api/v1/training/sessions/{sid}/cancel")
    assert again.status_code == 409
    assert "already ended" in again.json()["detail"]


def test_silent_run_is_reported_stalled(prefect_api_url: str) -> None:
    """A run that stops reporting becomes stalled after the silence limit (here 1.5 s)."""
    settings = Settings(prefect_api_url=prefect_api_url, stall_after_s=1.5)
    reader = PrefectReader(settings, cache_ttl_s=0, calibration_sessions=0)
    driver = Driver(images=100, face_items=10)
    sid = driver.start()
    driver.advance("embed", 10)

    async def read() -> str:
        async with reader.connected():
            return (await reader.unified(sid)).overall_status

    assert asyncio.run(read()) == "running"
    time.sleep(2.5)
    async def warnings() -> list[str]:
        async with reader.connected():
            return (await reader.unified(sid)).warnings

    assert asyncio.run(read()) == "stalled"
    assert any("killed" in w for w in asyncio.run(warnings()))
    driver.run_to_end()


def test_calibrated_weights_after_a_completed_session(prefect_api_url: str) -> None:
    """With a completed session on the server, a new session's weights are calibrated."""
    first = Driver(images=20, face_items=20)
    first.start()
    first.advance("embed", 20)
    first.run_to_end()
    assert first.outcome == "COMPLETED"

    reader = PrefectReader(Settings(prefect_api_url=prefect_api_url), cache_ttl_s=0)
    driver = Driver(images=20, face_items=20)
    sid = driver.start()
    driver.advance("embed", 5)

    async def read() -> tuple[str, float]:
        async with reader.connected():
            p = await reader.unified(sid)
            return p.weights_source, p.weights.training + p.weights.faceDetection

    source, shares = asyncio.run(read())
    assert source.startswith("calibrated from"), source
    assert 0.0 < shares <= 1.0
    # Fixed for the session: the same answer later, though another session completes meanwhile.
    driver.run_to_end()
    assert asyncio.run(read())[0] == source


def test_unknown_and_malformed_sessions(api: TestClient) -> None:
    missing = api.get(f"/api/v1/training/sessions/{uuid4()}/progress-unified")
    assert missing.status_code == 404
    assert missing.json()["detail"].startswith("Session not found")
    malformed = api.get("/api/v1/training/sessions/123/progress-unified")
    assert malformed.status_code == 422
    assert api.post(f"/api/v1/training/sessions/{uuid4()}/pause").status_code == 404


def test_session_list_newest_first_without_future_runs(api: TestClient) -> None:
    """The list holds recent sessions newest first and leaves future scheduled runs out."""
    from datetime import UTC, datetime, timedelta

    from prefect.client.orchestration import get_client
    from prefect.states import Scheduled

    from tests.api.drivable import index_photos

    async def schedule() -> UUID:
        async with get_client() as client:
            run = await client.create_flow_run(
                index_photos,
                parameters={"folder": "/future", "faces": True},
                state=Scheduled(scheduled_time=datetime.now(UTC) + timedelta(days=1)),
            )
            return run.id

    future = asyncio.run(schedule())
    driver = Driver(images=5, faces=False)
    sid = driver.start()
    driver.run_to_end()
    listing = api.get("/api/v1/training/sessions", params={"limit": 50})
    assert listing.status_code == 200, listing.text
    sessions = listing.json()["sessions"]
    ids = [s["sessionId"] for s in sessions]
    assert str(future) not in ids
    assert ids[0] == str(sid)
    newest = sessions[0]
    assert newest["folder"] == driver.folder and newest["skipFaceDetection"] is True
    assert newest["status"] == "completed"
    created = [s["createdAt"] for s in sessions]
    assert created == sorted(created, reverse=True)


def test_healthz(api: TestClient) -> None:
    assert api.get("/api/v1/healthz").json()["prefect"] == "ok"


def test_silent_session_turns_failed_and_is_listed_so(prefect_api_url: str) -> None:
    """A session that stops reporting reads stalled, then failed with how to re-run, also in
    the list; a paused one stays paused however long it waits (limits here 1.5 s and 3 s)."""
    settings = Settings(prefect_api_url=prefect_api_url, stall_after_s=1.5, fail_after_s=3.0)
    reader = PrefectReader(settings, cache_ttl_s=0, calibration_sessions=0)
    app = create_app(settings, reader)
    with TestClient(app, raise_server_exceptions=False, base_url=LOOPBACK) as client:
        paused = Driver(images=100, face_items=10)
        pid = paused.start()
        paused.advance("embed", 20)
        assert client.post(f"/api/v1/training/sessions/{pid}/pause").status_code == 200
        wait_for(client, pid, lambda p: p["overallStatus"] == "paused")
        silent = Driver(images=100, face_items=10)
        sid = silent.start()
        silent.advance("embed", 40)
        assert progress_of(client, sid)["overallStatus"] == "running"

        p = wait_for(client, sid, lambda p: p["overallStatus"] != "running", timeout=10)
        assert p["overallStatus"] == "stalled"
        p = wait_for(client, sid, lambda p: p["overallStatus"] == "failed", timeout=10)
        training = p["phases"]["training"]
        assert training["status"] == "failed"
        assert "probably died" in training["message"]
        assert f"Re-run the same folder ({silent.folder}" in training["message"]
        assert training["message"] in p["warnings"]
        assert p["phases"]["faceDetection"]["status"] == "skipped"
        assert p["overallProgress"]["percentage"] == 12.0

        listed = client.get("/api/v1/training/sessions", params={"limit": 50}).json()
        rows = {s["sessionId"]: s for s in listed["sessions"]}
        assert rows[str(sid)]["status"] == "failed"
        assert rows[str(sid)]["percentage"] == 12.0
        assert rows[str(pid)]["status"] == "paused"
        assert rows[str(pid)]["percentage"] == 6.0
        assert progress_of(client, pid)["overallStatus"] == "paused"  # silent > 3 s by now

        # Killed sessions can still be cancelled: nothing is left to stop, so at once.
        cancelled = client.post(f"/api/v1/training/sessions/{sid}/cancel").json()
        assert cancelled["overallStatus"] == "cancelled", cancelled
        assert client.post(f"/api/v1/training/sessions/{pid}/resume").status_code == 200
        paused.run_to_end()
        assert paused.outcome == "COMPLETED"
        listed = client.get("/api/v1/training/sessions", params={"limit": 50}).json()
        rows = {s["sessionId"]: s for s in listed["sessions"]}
        assert rows[str(pid)]["status"] == "completed"
        assert rows[str(pid)]["percentage"] == 100.0
    assert silent.ended.wait(30)
