"""Benchmark: 50 clients poll progress-unified every 2 s across 5 live sessions.

Starts a Prefect test server, five driven sessions held mid-phase, and the real API
under uvicorn on 127.0.0.1 in its own process; then measures request latency with the
per-session cache on, and again with it off (the baseline).

Run from the repository root: `.venv/bin/python -m bench.bench_progress_api`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import httpx

from tests.loopback import free_port

ROOT = Path(__file__).resolve().parents[1]

_SERVER = """
import sys, uvicorn
from api.app import create_app
from photoindex.settings import Settings
settings = Settings(prefect_api_url=sys.argv[1])
uvicorn.run(create_app(settings, cache_ttl_s=float(sys.argv[2])),
            host="127.0.0.1", port=int(sys.argv[3]), log_level="warning")
"""


@dataclass
class Result:
    """Latencies of one run."""

    label: str
    latencies_ms: list[float]
    errors: int
    seconds: float

    def quantile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def line(self) -> str:
        n = len(self.latencies_ms)
        return (
            f"{self.label:<14} requests={n:<5} errors={self.errors:<3} "
            f"rate={n / self.seconds:5.1f}/s  p50={self.quantile(0.50):6.1f} ms  "
            f"p99={self.quantile(0.99):6.1f} ms  max={max(self.latencies_ms):6.1f} ms  "
            f"mean={statistics.fmean(self.latencies_ms):6.1f} ms"
        )


def start_api(prefect_url: str, cache_ttl_s: float) -> tuple[subprocess.Popen[bytes], str]:
    """The real API under uvicorn, in its own process."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVER, prefect_url, str(cache_ttl_s), str(port)], env=env
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/api/v1/healthz", timeout=2).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the API did not start")


async def poll(
    client: httpx.AsyncClient, url: str, period_s: float, until: float, out: Result
) -> None:
    """One client: poll `url` every `period_s` seconds, starting at a random offset."""
    await asyncio.sleep(random.uniform(0, period_s))
    while time.monotonic() < until:
        started = time.perf_counter()
        try:
            response = await client.get(url)
            ok = response.status_code == 200
        except httpx.HTTPError:
            ok = False
        out.latencies_ms.append((time.perf_counter() - started) * 1000)
        out.errors += 0 if ok else 1
        await asyncio.sleep(max(0.0, period_s - (time.perf_counter() - started)))


async def load(
    base: str, sessions: list[UUID], clients: int, period_s: float, duration_s: float, label: str
) -> Result:
    """`clients` pollers spread over the sessions, for `duration_s` seconds."""
    out = Result(label, [], 0, duration_s)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:
        until = time.monotonic() + duration_s
        await asyncio.gather(
            *(
                poll(
                    client,
                    f"/api/v1/training/sessions/{sessions[i % len(sessions)]}/progress-unified",
                    period_s,
                    until,
                    out,
                )
                for i in range(clients)
            )
        )
    return out


def main() -> None:
    """Run the benchmark and print p50/p99 with and without the cache."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--sessions", type=int, default=5)
    parser.add_argument("--period", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=30.0)
    args = parser.parse_args()

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    sys.path.insert(0, str(ROOT))
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    from api.prefect_reader import DEFAULT_CACHE_TTL_S
    from tests.api.drivable import Driver

    with prefect_test_harness(server_startup_timeout=90):
        prefect_url = str(PREFECT_API_URL.value())
        drivers = [Driver(images=1000, face_items=1000) for _ in range(args.sessions)]
        sessions = [d.start() for d in drivers]
        for i, driver in enumerate(drivers):
            driver.advance("embed", 100 + 150 * i)  # different points, all still running
        print(
            f"{args.clients} clients polling every {args.period:.0f} s across "
            f"{len(sessions)} running sessions for {args.duration:.0f} s each run"
        )
        results: list[Result] = []
        with_cache = (f"cache {DEFAULT_CACHE_TTL_S} s", DEFAULT_CACHE_TTL_S)
        for label, ttl in (with_cache, ("no cache", 0.0)):
            proc, base = start_api(prefect_url, ttl)
            try:
                asyncio.run(load(base, sessions, 4, 0.5, 3.0, "warm-up"))
                results.append(
                    asyncio.run(
                        load(base, sessions, args.clients, args.period, args.duration, label)
                    )
                )
            finally:
                proc.terminate()
                proc.wait(10)
            print(results[-1].line())
        cached, baseline = results
        print(
            f"baseline/cached: p50 x{baseline.quantile(0.5) / cached.quantile(0.5):.2f}, "
            f"p99 x{baseline.quantile(0.99) / cached.quantile(0.99):.2f}"
        )
        for driver in drivers:
            driver.run_to_end()


if __name__ == "__main__":
    main()
