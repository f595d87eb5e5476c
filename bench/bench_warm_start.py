"""Benchmark: a warm indexer against cold session processes, and how truthful progress is.

Everything runs as a user's sessions do, on one real `prefect server`: cold sessions
through `photoindex index` (a new process per session; measured from the command's
start), warm ones handed to a warm indexer (`python -m photoindex.indexer`, what
`photoindex serve` keeps) through `photoindex.launch.submit_session` (what the API's POST
does; measured from the call). Progress is sampled every 0.5 s with the reader the API
and CLI use. The cold path is the baseline for the warm one.

Cold sessions run while no warm indexer is up, as a user's cold sessions do (a loaded
indexer beside a cold process slowed its imports and model load by 0.7-2.4 s).

1. Cold: a calibration session on set A (phone-size photos), then set B (other photos)
   on a wiped catalog, measured.
2. Warm, with the indexer started: the same two sessions, then 20 new photos added to
   set B (the warm incremental session), then a session that forgets them again.
3. Cold again, the indexer stopped: the same 20 new photos (the cold incremental one).

Measured on set B, cold and warm: time to the first response with percentage > 0, to the
first batch written (its first status row in the catalog; the steps before it, by
Prefect's clock, are printed too), progress error (reported percentage minus elapsed
share of the wall time), ETA error after the first 10 %, whether the percentage ever
went down, and `completed` after the last phase's end. Beside the ETA's error, the error
of the estimate behind it before the contract's whole seconds round it, and their floor:
the error of a perfect ETA in whole seconds on the same samples (5-7 % on a 9-second
session). Incremental: wall time, cold against warm.

One calibrating session of each route by default, as the issue measured; with
`--calibrations N`, N of each (set A again on a wiped catalog), as a service that has run
a few nights calibrates from its last five (`api.weights.CALIBRATION_SESSIONS`).
Progress is read once a sample, as the API's endpoint does, and measured at the time the
progress was computed for.

Run from the repository root: `.venv/bin/python -m bench.bench_warm_start`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

from bench import photoset
from bench.common import (
    DEFAULT_CACHE,
    header,
    mb,
    prepare_process,
    seed_face_models,
    server_retries,
    table,
    tree_cpu_s,
    workbench,
)
from photoindex.phases import CONTRACT_KEYS

TERMINAL = {"completed", "failed", "cancelled"}
#: The benchmark's Prefect server's log (set in main), where it notes each write it retried.
SERVER_LOG: Path | None = None


def _retried() -> int:
    return 0 if SERVER_LOG is None else server_retries(SERVER_LOG)[0]


@dataclass
class Run:
    """One session's samples against its real timeline (epoch seconds)."""

    label: str
    started: float
    session_id: UUID | None = None
    samples: list[tuple[float, float, int | None, str]] = field(default_factory=list)
    left_s: list[float | None] = field(default_factory=list)
    """Each sample's time left before the contract's `etaSeconds` rounds it."""
    first_batch: float | None = None
    """When the API first saw a batch's results (sampled)."""
    steps: dict[str, float] = field(default_factory=dict)
    read_s: list[tuple[float, float]] = field(default_factory=list)
    """(when asked, seconds) of each sample's read through the API's reader."""
    end: float = 0.0
    last_phase_end: float = 0.0
    weights: str = ""
    trace: list[dict[str, object]] = field(default_factory=list)
    """Each sample's phase percentages and messages, for `--trace`."""
    phase_runs: list[tuple[str, float | None, float | None]] = field(default_factory=list)
    returned: float | None = None
    """When `photoindex index` returned (cold runs): its user waits for that, not the run."""
    retried_before: int = field(default_factory=_retried)
    retried: int = 0
    """Writes the Prefect server refused and retried itself during the run (its log says)."""

    @property
    def wall_s(self) -> float:
        return self.end - self.started

    def during(self) -> list[tuple[float, float, int | None, str]]:
        return [s for s in self.samples if s[0] <= self.end]

    def errors(self) -> list[float]:
        return [p - 100 * (t - self.started) / self.wall_s for t, p, _, _ in self.during()]

    def eta_errors(self, kind: str = "reported") -> list[float]:
        """The ETA's relative error at each sample after the first 10 % of the run: the
        `reported` one (`etaSeconds`, whole seconds), the estimate behind it `unrounded`,
        or the `floor` of the same samples' error, a perfect ETA in whole seconds."""
        out = []
        for (t, _, eta, _), unrounded in zip(self.during(), self.left_s, strict=False):
            left = self.end - t
            if t - self.started >= 0.1 * self.wall_s and left > 0 and eta is not None:
                told = {"reported": eta, "unrounded": unrounded, "floor": round(left)}[kind]
                if told is not None:
                    out.append(abs(told - left) / left)
        return out

    def first_moving(self) -> float | None:
        return next((t - self.started for t, p, _, _ in self.samples if p > 0), None)

    def went_down(self) -> bool:
        values = [p for _, p, _, _ in self.samples]
        return any(b < a for a, b in zip(values, values[1:], strict=False))

    def first_completed(self) -> float | None:
        """When the progress first read `completed` (epoch seconds)."""
        return next((t for t, _, _, status in self.samples if status == "completed"), None)

    def completion_lag(self) -> float | None:
        done = self.first_completed()
        return None if done is None else done - self.last_phase_end

    def seen_done_s(self) -> float | None:
        """From the start to when its user knows it is done: the command returned (cold),
        or the progress first read `completed` (warm, as the API's clients see it)."""
        done = self.returned if self.returned is not None else self.first_completed()
        return None if done is None else done - self.started


async def _sample(run: Run, period_s: float) -> None:
    from api.prefect_reader import PrefectUnavailable, default_reader
    from api.progress import time_left_s

    assert run.session_id is not None
    reader = default_reader()
    async with reader.connected():
        while True:
            tick = time.monotonic()
            try:
                asked = time.time()
                snap, weights, raw = await reader.snapshot(run.session_id)
                p = reader.progress_of(raw, weights)  # what the API answers from this read
                run.read_s.append((asked - run.started, time.time() - asked))
            except PrefectUnavailable:
                await asyncio.sleep(period_s)
                continue
            now = snap.now.timestamp()  # the time the progress is computed for
            embed = snap.phase("training").counts
            if run.first_batch is None and embed is not None and embed.fresh > 0:
                run.first_batch = now - run.started
            run.samples.append(
                (now, p.overall_progress.percentage, p.overall_progress.eta_seconds,
                 p.overall_status)
            )  # fmt: skip
            run.left_s.append(time_left_s(snap, weights, p))
            run.weights = p.weights_source
            run.trace.append({
                "t": now - run.started, "pct": p.overall_progress.percentage,
                "eta": p.overall_progress.eta_seconds, "left": run.left_s[-1],
                "status": p.overall_status,
                "phases": {key: [phase.status, phase.progress.percentage, phase.message]
                           for key in CONTRACT_KEYS
                           for phase in [getattr(p.phases, key)]},
                "weights": p.weights.model_dump(),
                "counts": {key: None if c is None else
                           [c.fresh, c.active, c.todo, round(c.pace, 1),
                            round(c.last_done - run.started, 3) if c.last_done else None]
                           for key in CONTRACT_KEYS for c in [snap.phase(key).counts]},
            })  # fmt: skip
            if p.overall_status in TERMINAL:
                return
            await asyncio.sleep(max(0.0, period_s - (time.monotonic() - tick)))


def _finish(run: Run) -> Run:
    from bench.common import session_runs

    assert run.session_id is not None
    runs = session_runs(run.session_id)
    parent, phases = runs[0], runs[1:]
    assert parent.end is not None, "the session did not end"
    run.end = parent.end
    run.phase_runs = [(r.flow, r.start, r.end) for r in runs]
    run.last_phase_end = max((r.end for r in phases if r.end is not None), default=parent.end)
    run.steps = asyncio.run(_first_batch_steps(run.session_id))
    run.retried = _retried() - run.retried_before
    written = _first_written(run.started)
    if written is not None:
        run.steps["first batch written"] = written
    return run


def _first_written(since: float) -> float | None:
    """When (epoch seconds) the session's first embed batch was written: the time its
    status rows carry, set as the write ends (the catalog, as the API reads it)."""
    from tasks.catalog import Catalog

    rows = Catalog().query(
        "SELECT min(updated_at) AS t FROM status "
        "WHERE phase = 'embed' AND status = 'indexed' AND updated_at >= ?",
        (datetime.fromtimestamp(since, UTC),),
    )
    first = rows[0]["t"] if rows else None
    return None if first is None else float(first.timestamp())


async def _first_batch_steps(session_id: UUID) -> dict[str, float]:
    """When (epoch seconds) the session reached each step before its first batch was
    written, from Prefect's own timestamps: the parent running, the embed subflow running,
    and its first batch in flight and computed."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterParentFlowRunId,
    )

    from photoindex.phases import BY_KEY

    steps: dict[str, float] = {}
    async with get_client() as client:
        parent = await client.read_flow_run(session_id)
        children = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[session_id])
            )
        )
        embed_flow = BY_KEY["embed"].flow
        embed = [r for r in children if (await client.read_flow(r.flow_id)).name == embed_flow]
        if parent.start_time is not None:
            steps["session running"] = parent.start_time.timestamp()
        if not embed or embed[0].start_time is None:
            return steps
        steps["embed subflow running"] = embed[0].start_time.timestamp()
        tasks = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[embed[0].id]))
        )
        for label, prefix, attr in (
            ("first batch in flight", "embed-batch", "start_time"),
            ("first batch computed", "embed-batch", "end_time"),
        ):
            times = [getattr(t, attr).timestamp() for t in tasks
                     if t.name.startswith(prefix) and getattr(t, attr) is not None]  # fmt: skip
            if times:
                steps[label] = min(times)
    return steps


def cold(label: str, folder: Path, period_s: float) -> Run:
    """`photoindex index FOLDER` in a new process, timed from the command's start."""
    run = Run(label, time.time())
    cli = Path(sys.executable).with_name("photoindex")
    api_url = os.environ["PREFECT_API_URL"]  # the benchmark's server, not one of its own
    proc = subprocess.Popen(
        [str(cli), "index", "--cold", str(folder)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env=os.environ | {"COLUMNS": "200", "PHOTOINDEX_PREFECT_API_URL": api_url},
    )  # fmt: skip
    assert proc.stdout is not None
    for raw in proc.stdout:
        line = raw.decode(errors="replace")
        if line.startswith("session "):
            run.session_id = UUID(line.split()[1])
            break
    if run.session_id is None:
        raise RuntimeError(f"photoindex index printed no session: {proc.wait()}")
    asyncio.run(_sample(run, period_s))
    proc.stdout.read()
    proc.wait()
    run.returned = time.time()
    return _finish(run)


def warm(label: str, folder: Path, period_s: float) -> Run:
    """The session handed to the warm indexer, as the API's POST does."""
    from photoindex.launch import submit_session

    run = Run(label, time.time())
    launched = submit_session(folder, faces=True)
    if launched.route != "warm":
        raise RuntimeError(f"the session ran {launched.route}, not on the warm indexer")
    run.session_id = launched.session_id
    asyncio.run(_sample(run, period_s))
    return _finish(run)


@dataclass
class CpuUse:
    """CPU seconds spent during one session by the process that ran it (the warm indexer,
    or `photoindex index` with everything it started), the Prefect server, and this
    benchmark's progress sampling."""

    session: float
    server: float | None
    sampler: float

    def line(self, run: Run) -> str:
        parts = [f"session {self.session:.1f}", f"sampler {self.sampler:.1f}"]
        total = self.session + self.sampler
        if self.server is not None:
            parts.insert(1, f"Prefect server {self.server:.1f}")
            total += self.server
        share = 100 * total / (run.wall_s * (os.cpu_count() or 1))
        return (f"{run.label}: {' + '.join(parts)} = {total:.1f} CPU s in {run.wall_s:.1f} s "
                f"({share:.0f} % of {os.cpu_count()} cores)")  # fmt: skip


def measure_cpu(
    start: Callable[[], Run], server: int | None, indexer: int | None
) -> tuple[Run, CpuUse]:
    """Run one session and count the CPU each process spent on it. Without `indexer`, the
    session ran in a child process this one has reaped (`photoindex index --cold`)."""

    def now() -> tuple[float, float, float | None, float | None]:
        own, reaped = (resource.getrusage(who) for who in
                       (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))  # fmt: skip
        return (own.ru_utime + own.ru_stime, reaped.ru_utime + reaped.ru_stime,
                None if server is None else tree_cpu_s(server),
                None if indexer is None else tree_cpu_s(indexer))  # fmt: skip

    before = now()
    run = start()
    after = now()
    session = after[1] - before[1] if indexer is None else (after[3] or 0) - (before[3] or 0)
    spent = None if server is None else (after[2] or 0) - (before[2] or 0)
    return run, CpuUse(session, spent, after[0] - before[0])


def wipe(data: Path) -> None:
    """A fresh catalog, vectors, crops and persisted batch results (models and Prefect's
    history stay), so the next session computes everything again."""
    results = Path(os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"])
    for path in [*(data / name for name in ("catalog", "qdrant", "crops", "catalog.duckdb")),
                 results]:  # fmt: skip
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def start_indexer(log: Path) -> subprocess.Popen[bytes]:
    from photoindex.indexer import socket_path, warm_indexer
    from photoindex.settings import get_settings

    proc = subprocess.Popen(
        [sys.executable, "-m", "photoindex.indexer"], stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while warm_indexer(get_settings()) is None:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the warm indexer did not start; see {log}")
        time.sleep(0.5)
    print(f"warm indexer ready at {socket_path(get_settings())}")
    from photoindex.launch import prepare

    prepare()  # this process launches the warm sessions: it prepares as the API does at start
    return proc


def indexer_memory(pid: int) -> tuple[int, int]:
    """The warm indexer's RSS with its models loaded, then after it unloaded them."""
    from bench.common import tree_rss
    from photoindex.indexer import IndexerClient, socket_path
    from photoindex.settings import get_settings

    loaded = tree_rss(pid)
    IndexerClient(socket_path(get_settings())).unload()
    time.sleep(2.0)
    return loaded, tree_rss(pid)


def add_new(folder: Path, extra: Path, n: int) -> None:
    """Copy `n` photos of another set into `folder`, as a day's new photos."""
    dest = folder / "new"
    dest.mkdir(exist_ok=True)
    for path in sorted(extra.rglob("*.jpg"))[:n]:
        shutil.copy2(path, dest / path.name)


def main() -> None:
    """Calibrate, then measure cold against warm, then an incremental session of each."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=120)
    parser.add_argument("--new", type=int, default=20)
    parser.add_argument("--size", choices=["normal", "phone", "small"], default="phone")
    parser.add_argument("--period", type=float, default=0.5)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--trace", type=Path, help="write each run's samples here as JSON")
    parser.add_argument(
        "--calibrations", type=int, default=1, choices=range(1, 6), metavar="N",
        help="calibrating sessions on set A before each route's measured one (1-5; "
             "default 1)",
    )  # fmt: skip
    args = parser.parse_args()

    prepare_process()
    set_a = photoset.build(args.n, args.size, args.cache, seed=1)
    set_b_src = photoset.build(args.n + 1, args.size, args.cache, seed=2)
    extra = photoset.build(args.new, args.size, args.cache, seed=3)
    bench = workbench("warm", args.cache, "data")
    global SERVER_LOG
    SERVER_LOG = bench.server_log if bench.server is not None else None
    data = bench.work / "data"
    seed_face_models(args.cache, data)
    os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = str(bench.work / "results")
    set_b = bench.work / "set-b"
    shutil.copytree(set_b_src, set_b)

    header("warm indexer vs cold session processes")
    print(f"photos: {photoset.describe(set_a)}; Prefect {bench.api_url}; work {bench.work}")
    runs: list[Run] = []
    # Cold sessions run with no warm indexer on the machine, as a user's do (with one up,
    # `photoindex index` hands it the session): measured, a loaded indexer beside a cold
    # session process made its imports and model load 0.7-2.4 s slower.
    for k in range(args.calibrations):
        if k:
            wipe(data)
        runs.append(cold(f"cold calibration (A){_nth(k, args)}", set_a, args.period))
    wipe(data)
    runs.append(cold_b := cold("cold measured (B)", set_b, args.period))
    indexer = start_indexer(bench.work / "indexer.log")
    try:
        for k in range(args.calibrations):
            wipe(data)
            runs.append(warm(f"warm calibration (A){_nth(k, args)}", set_a, args.period))
        wipe(data)
        runs.append(warm_b := warm("warm measured (B)", set_b, args.period))
        add_new(set_b, extra, args.new)
        server = None if bench.server is None else bench.server.pid
        warm_inc, warm_cpu = measure_cpu(
            lambda: warm(f"warm +{args.new} new", set_b, args.period), server, indexer.pid
        )
        runs.append(warm_inc)
        shutil.rmtree(set_b / "new")
        warm("(reset: forget the new photos)", set_b, args.period)
        add_new(set_b, extra, args.new)
        shutil.rmtree(os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"])  # compute them again
        memory = indexer_memory(indexer.pid)
    finally:
        indexer.terminate()
        indexer.wait()
    cold_inc, cold_cpu = measure_cpu(
        lambda: cold(f"cold +{args.new} new", set_b, args.period), server, None
    )
    runs.append(cold_inc)

    print("from the start to the first batch written (s; the last from the catalog):")
    step_names = list(dict.fromkeys(k for r in runs for k in r.steps))
    print(table(
        ["run", *step_names],
        [[r.label, *(f"{r.steps[k] - r.started:.2f}" if k in r.steps else "-"
                     for k in step_names)] for r in runs],
    ))  # fmt: skip
    if args.trace is not None:
        args.trace.write_text(json.dumps([
            {"label": r.label, "started": r.started, "end": r.end, "weights": r.weights,
             "first_batch": r.first_batch, "steps": r.steps, "reads": r.read_s,
             "runs": r.phase_runs,
             "samples": r.trace}
            for r in runs
        ], indent=1, default=str))  # fmt: skip
    rows = []
    for r in runs:
        errs = [abs(e) for e in r.errors()]
        eta, unrounded, floor = (r.eta_errors(k) for k in ("reported", "unrounded", "floor"))
        lag = r.completion_lag()
        rows.append([
            r.label, r.weights, r.wall_s, r.first_moving() or "-", _written(r),
            r.first_batch or "-",
            max(errs) if errs else "-", statistics.fmean(errs) if errs else "-",
            *(f"{100 * statistics.median(e):.1f}%" if e else "-"
              for e in (eta, unrounded, floor)),
            "yes" if r.went_down() else "no", "-" if lag is None else lag,
            r.retried if SERVER_LOG is not None else "-",
        ])  # fmt: skip
    print(table(
        ["run", "weights", "wall s", "to % > 0 s", "to 1st batch written s",
         "1st batch seen s", "max |err|", "mean |err|",
         "ETA med err", "unrounded", "whole-s floor", "% went down", "completed lag s",
         "writes retried in server"], rows,
    ))  # fmt: skip
    print(
        f"warm / cold: to % > 0 x{(warm_b.first_moving() or 0) / (cold_b.first_moving() or 1):.2f}"
        f", to first batch written x{_written(warm_b) / _written(cold_b):.2f}; "
        f"incremental +{args.new}: cold {cold_inc.wall_s:.1f} s / warm {warm_inc.wall_s:.1f} s "
        f"= x{cold_inc.wall_s / warm_inc.wall_s:.2f} faster warm (target >= 4)"
    )
    cold_seen, warm_seen = cold_inc.seen_done_s(), warm_inc.seen_done_s()
    if cold_seen is not None and warm_seen is not None:
        print(
            f"incremental +{args.new} as its user sees it: `photoindex index --cold` returned "
            f"after {cold_seen:.1f} s; the warm session read `completed` {warm_seen:.1f} s "
            f"after the POST = x{cold_seen / warm_seen:.2f}"
        )
    print("CPU during the incremental sessions (the machine's floor for their wall time):")
    print(f"  {warm_cpu.line(warm_inc)}\n  {cold_cpu.line(cold_inc)}")
    print(f"warm indexer RSS: {mb(memory[0])} with models loaded, {mb(memory[1])} after "
          "unloading them (what PHOTOINDEX_MODEL_IDLE_S idle does)")
    w_err = [abs(e) for e in warm_b.errors()]
    c_err = [abs(e) for e in cold_b.errors()]
    print(
        f"targets: warm max |err| {max(w_err):.1f} (<= 5), mean {statistics.fmean(w_err):.1f} "
        f"(<= 2); cold max |err| {max(c_err):.1f} (<= 8); warm to first batch "
        f"{_written(warm_b):.2f} s (<= 2)"
    )


def _nth(k: int, args: argparse.Namespace) -> str:
    return f" #{k + 1}" if args.calibrations > 1 else ""


def _written(run: Run) -> float:
    """Seconds from the start to the first batch written (its status rows' time)."""
    written = run.steps.get("first batch written")
    return float("nan") if written is None else written - run.started


if __name__ == "__main__":
    main()
