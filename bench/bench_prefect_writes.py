"""Benchmark: concurrent writes to the local Prefect server, Prefect's own server against
photoindex's (`photoindex.prefect_app`, which retries a write SQLite refused in the server).

Each round starts a fresh server of one kind on its own data folder, the way
`photoindex` starts it (`photoindex.prefect_server.ensure_prefect_api`), and runs the
same load in a child process: `--writers` Prefect clients at once, each making
`--runs` task runs in one flow run (create, Running, Completed: the writes a batch or a
subflow makes). A write SQLite refuses comes back as a 503 that Prefect's client waits
2 s (then 4, 8 ...) to retry; the client's own log counts them, and our server's log
counts the writes it retried itself. Printed: wall time, p50 / p99 / max of one task
run's three writes, 503s the client saw, writes retried in the server, and our server
against Prefect's in the same run. Rounds alternate between the two servers.

Run from the repository root: `.venv/bin/python -m bench.bench_prefect_writes`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.common import header, prepare_process, server_retries, table
from tests.loopback import free_port

SERVERS = {"prefect server start": "prefect", "photoindex.prefect_app": "photoindex"}


def load(writers: int, runs: int) -> dict[str, object]:
    """In the child: the concurrent writes, timed; the client's 503 retries counted."""
    from prefect import flow, task
    from prefect.client.orchestration import get_client
    from prefect.states import Completed, Running

    retries = 0

    class CountRetries(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            nonlocal retries
            if "retryable status code 503" in record.getMessage():
                retries += 1

    client_log = logging.getLogger("prefect.client")
    client_log.setLevel(logging.DEBUG)
    client_log.addHandler(CountRetries())

    @flow(name="bench-writes")
    def parent() -> None:
        """The flow run the task runs belong to (never run)."""

    @task(name="bench-write")
    def unit() -> None:
        """The task the task runs are of (never run)."""

    async def run() -> tuple[float, list[float]]:
        async with get_client() as client:
            flow_run = await client.create_flow_run(parent)
        times: list[float] = []

        async def writer(w: int) -> None:
            async with get_client() as client:
                for i in range(runs):
                    start = time.perf_counter()
                    task_run = await client.create_task_run(
                        unit, flow_run_id=flow_run.id, dynamic_key=f"{w}-{i}"
                    )
                    await client.set_task_run_state(task_run.id, Running())
                    await client.set_task_run_state(task_run.id, Completed())
                    times.append(time.perf_counter() - start)

        start = time.perf_counter()
        await asyncio.gather(*(writer(w) for w in range(writers)))
        return time.perf_counter() - start, times

    wall, times = asyncio.run(run())
    return {"wall": wall, "times": times, "retries": retries}


def round_(kind: str, writers: int, runs: int) -> dict[str, object]:
    """A fresh server of `kind`, the load against it in a child process, the server stopped."""
    from photoindex.prefect_server import (
        PREFECT_SERVER_COMMAND,
        SERVER_COMMAND,
        ensure_prefect_api,
        stop_server,
    )
    from photoindex.settings import Settings

    command = SERVER_COMMAND if kind == "photoindex" else PREFECT_SERVER_COMMAND
    data = Path(tempfile.mkdtemp(prefix=f"bench-writes-{kind}-"))
    settings = Settings(data_dir=data, prefect_port=free_port(), prefect_api_url=None)
    _, server = ensure_prefect_api(settings, wait_s=180, command=command)
    try:
        out = subprocess.run(
            [sys.executable, "-m", "bench.bench_prefect_writes", "--child",
             "--writers", str(writers), "--runs", str(runs)],
            check=True, capture_output=True, text=True, env=os.environ.copy(),
        )  # fmt: skip
    finally:
        if server is not None:
            stop_server(server)
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    result["server_retried"], result["server_tries"] = server_retries(settings.prefect_server_log)
    return result


def summary(results: Sequence[dict[str, object]]) -> dict[str, float]:
    """Pooled over a server's rounds: wall time, one task run's writes, the client's 503s."""
    times = sorted(t for r in results for t in r["times"])  # type: ignore[attr-defined]
    return {
        "wall": statistics.fmean(float(r["wall"]) for r in results),  # type: ignore[arg-type]
        "p50": times[len(times) // 2],
        "p99": times[min(len(times) - 1, int(len(times) * 0.99))],
        "max": times[-1],
        "retries": sum(int(r["retries"]) for r in results),  # type: ignore[call-overload]
        "server_retried": sum(int(r["server_retried"]) for r in results),  # type: ignore[call-overload]
        "server_tries": sum(int(r["server_tries"]) for r in results),  # type: ignore[call-overload]
        "slow": sum(t > 1.0 for t in times),
        "n": len(times),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writers", type=int, default=3, help="Prefect clients writing at once")
    parser.add_argument("--runs", type=int, default=60, help="task runs each client makes")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per server, alternated")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    prepare_process()
    if args.child:
        print(json.dumps(load(args.writers, args.runs)))  # noqa: T201
        return

    header("concurrent writes: Prefect's server vs photoindex's (retries refused writes)")
    print(f"load: {args.writers} clients at once x {args.runs} task runs (3 writes each), "  # noqa: T201
          f"{args.rounds} rounds per server, alternated")  # fmt: skip
    results: dict[str, list[dict[str, object]]] = {"prefect": [], "photoindex": []}
    for _ in range(args.rounds):
        for kind in results:
            results[kind].append(round_(kind, args.writers, args.runs))
    rows = []
    stats = {kind: summary(r) for kind, r in results.items()}
    for name, kind in SERVERS.items():
        s = stats[kind]
        rows.append([name, f"{s['wall']:.2f}", f"{s['p50'] * 1000:.0f}", f"{s['p99'] * 1000:.0f}",
                     f"{s['max'] * 1000:.0f}", f"{s['slow']:.0f} of {s['n']:.0f}",
                     f"{s['retries']:.0f}",
                     f"{s['server_retried']:.0f} ({s['server_tries']:.0f} tries)"
                     if kind == "photoindex" else "-"])  # fmt: skip
    print(table(["server", "wall s (mean)", "p50 ms", "p99 ms", "max ms", "task runs > 1 s",  # noqa: T201
                 "503s the client waited on", "writes retried in the server"], rows))  # fmt: skip
    base, ours = stats["prefect"], stats["photoindex"]
    print(  # noqa: T201
        f"photoindex / prefect: wall x{ours['wall'] / base['wall']:.2f}, "
        f"p99 x{ours['p99'] / base['p99']:.2f}, max x{ours['max'] / base['max']:.2f}; "
        f"503s the client waited on {ours['retries']:.0f} vs {base['retries']:.0f}"
    )


if __name__ == "__main__":
    main()
