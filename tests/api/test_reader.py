"""The Prefect reader on its own, over driven sessions on the test server: what it reads,
and how its cache keeps many pollers from multiplying Prefect queries."""

from __future__ import annotations

import asyncio
from uuid import UUID, uuid4

import pytest

from api.prefect_reader import PrefectReader, SessionNotFound
from api.schemas import UnifiedProgressResponse
from photoindex.settings import Settings
from tests.api.drivable import Driver


def _reader(prefect_api_url: str, ttl_s: float) -> PrefectReader:
    return PrefectReader(
        Settings(prefect_api_url=prefect_api_url), cache_ttl_s=ttl_s, calibration_sessions=0
    )


async def _unified(reader: PrefectReader, sid: UUID, times: int = 1) -> UnifiedProgressResponse:
    """`times` concurrent reads of one session; all must agree."""
    answers = await asyncio.gather(*(reader.unified(sid) for _ in range(times)))
    assert all(a == answers[0] for a in answers)
    return answers[0]


def test_snapshot_reads_phases_and_counts_from_the_runs_and_artifacts(
    prefect_api_url: str,
) -> None:
    driver = Driver(images=100, face_items=40)
    sid = driver.start()
    driver.advance("embed", 37)

    async def read() -> dict[str, tuple[str | None, int | None, int | None]]:
        async with _reader(prefect_api_url, 0).connected() as reader:
            snap, _, _ = await reader.snapshot(sid)
            return {
                key: (
                    None if p.run is None else p.run.state_type,
                    None if p.counts is None else p.counts.current,
                    None if p.counts is None else p.counts.total,
                )
                for key, p in snap.phases.items()
            }

    phases = asyncio.run(read())
    assert phases["training"] == ("RUNNING", 37, 100)
    assert phases["faceDetection"] == (None, None, None)  # its run does not exist yet
    driver.run_to_end()
    phases = asyncio.run(read())
    assert {key: state for key, (state, _, _) in phases.items()} == {
        "training": "COMPLETED",
        "faceDetection": "COMPLETED",
        "clustering": "COMPLETED",
    }
    assert phases["faceDetection"][1:] == (40, 40)


def test_pollers_within_the_ttl_share_one_fetch(prefect_api_url: str) -> None:
    driver = Driver(images=100, face_items=10)
    sid = driver.start()
    driver.advance("embed", 10)

    async def scenario() -> tuple[int, int, int, int]:
        async with _reader(prefect_api_url, 0).connected() as uncached:
            await _unified(uncached, sid)
            one_fetch = uncached.prefect_queries
        async with _reader(prefect_api_url, 30).connected() as reader:
            # Twenty pollers at once on a cold cache: one fetch between them.
            await _unified(reader, sid, times=20)
            coalesced = reader.prefect_queries
            await _unified(reader, sid, times=20)  # warm: served from the cache
            cached = reader.prefect_queries
            reader.invalidate(sid)
            await _unified(reader, sid)
            return one_fetch, coalesced, cached, reader.prefect_queries

    one_fetch, coalesced, cached, after_invalidate = asyncio.run(scenario())
    assert one_fetch > 0
    assert coalesced == one_fetch
    assert cached == coalesced
    # Forgotten: the next read fetches again (flow names stay known, so it may cost less).
    assert coalesced < after_invalidate <= coalesced + one_fetch
    driver.run_to_end()


def test_cached_answers_follow_the_session_after_the_ttl(prefect_api_url: str) -> None:
    driver = Driver(images=100, face_items=10)
    sid = driver.start()
    driver.advance("embed", 10)

    async def scenario() -> list[int]:
        seen: list[int] = []
        async with _reader(prefect_api_url, 0.2).connected() as reader:
            seen.append((await reader.unified(sid)).phases.training.progress.current)
            await asyncio.to_thread(driver.advance, "embed", 55)
            # Within 4 TTLs the stale answer is served while a refresh runs; then it is new.
            for _ in range(50):
                await asyncio.sleep(0.1)
                current = (await reader.unified(sid)).phases.training.progress.current
                seen.append(current)
                if current == 55:
                    break
        return seen

    seen = asyncio.run(scenario())
    assert seen[0] == 10
    assert seen[-1] == 55
    assert seen == sorted(seen)
    driver.run_to_end()


def test_an_ended_session_is_read_with_fewer_queries(prefect_api_url: str) -> None:
    """The phases of a session that has ended never change: only the parent is re-read."""
    driver = Driver(images=10, face_items=10)
    sid = driver.start()
    driver.run_to_end()

    async def scenario() -> tuple[int, int]:
        async with _reader(prefect_api_url, 0).connected() as reader:
            await reader.unified(sid)
            first = reader.prefect_queries
            again = await reader.unified(sid)
            assert again.overall_status == "completed"
            return first, reader.prefect_queries - first

    first, second = asyncio.run(scenario())
    assert 0 < second < first


def test_a_running_session_is_read_in_two_queries(prefect_api_url: str) -> None:
    """Each refresh of a running session asks Prefect twice: its runs (the session's and
    its phases', in one filter) and their progress artifacts. Pollers cost Prefect's server
    CPU that the session itself needs on a small machine."""
    driver = Driver(images=100, face_items=10)
    sid = driver.start()
    driver.advance("embed", 10)

    async def scenario() -> tuple[list[int], int]:
        costs, current = [], 0
        async with _reader(prefect_api_url, 0).connected() as reader:
            await reader.unified(sid)  # learns the flows' names
            await asyncio.to_thread(driver.advance, "embed", 60)
            for _ in range(50):  # until the reader sees the new counts
                before = reader.prefect_queries
                current = (await reader.unified(sid)).phases.training.progress.current
                costs.append(reader.prefect_queries - before)
                if current == 60:
                    break
                await asyncio.sleep(0.1)
        return costs, current

    costs, current = asyncio.run(scenario())
    assert current == 60
    assert set(costs) == {2}
    driver.run_to_end()


def test_an_unknown_session_is_not_found(prefect_api_url: str) -> None:
    async def read() -> None:
        async with _reader(prefect_api_url, 0.75).connected() as reader:
            await reader.unified(uuid4())

    with pytest.raises(SessionNotFound):
        asyncio.run(read())
