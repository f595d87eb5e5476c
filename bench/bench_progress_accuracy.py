"""Benchmark: how truthful the unified progress is, with seed weights and with calibrated ones.

A full session on N photos goes the way a user's does: a real `prefect server` (started
as the CLI starts it), the session started with `flows.index_photos.submit_session` (what
the API's POST does), and `api.prefect_reader.get_unified_progress` (what the CLI and the
API serve) sampled every 0.5 s on one connected reader, as the API holds one.

Error at a sample = reported percentage minus the elapsed share of the session's wall time
(from submitting to the session run's end), in points. ETA error = |reported ETA - actual
time left| / actual time left, median over the samples after the first 10 % of the run.
Completion lag = from the last phase run's end to the first sample reading `completed`.

Run 1 uses a fresh Prefect server, so no session has finished and the seed's static
weights apply (the baseline). Run 2 uses the same server (history exists: calibrated
weights) with a fresh data folder, so it does all the work again. The response's
`weightsSource` is checked for both.

Run from the repository root: `.venv/bin/python -m bench.bench_progress_accuracy`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from uuid import UUID

from bench import photoset
from bench.common import (
    DEFAULT_CACHE,
    configure,
    header,
    prepare_process,
    seed_face_models,
    session_runs,
    table,
    workbench,
)
from photoindex.phases import CONTRACT_KEYS

TERMINAL = {"completed", "failed", "cancelled"}


@dataclass
class Sample:
    """One answer of the progress calculation, stamped when it arrived."""

    at: float
    percentage: float
    eta_s: int | None
    status: str
    phase: str
    weights_source: str
    detail: dict[str, object] | None = None
    """With `--trace`: each phase's status, percentage and counts at this sample."""


@dataclass
class Outcome:
    """One session's samples and its real timeline (epoch seconds)."""

    label: str
    session_id: UUID
    submitted: float
    end: float  # the session run's end_time
    last_phase_end: float
    samples: list[Sample] = field(default_factory=list)
    weights: str = ""

    @property
    def wall_s(self) -> float:
        return self.end - self.submitted

    def during(self) -> list[Sample]:
        return [s for s in self.samples if self.submitted <= s.at <= self.end]

    def errors(self) -> list[float]:
        """Percentage minus elapsed share, in points, at each sample during the run."""
        return [s.percentage - 100 * (s.at - self.submitted) / self.wall_s for s in self.during()]

    def eta_errors(self) -> tuple[list[float], int]:
        """Relative ETA errors after the first 10 % of the run, and how many had no ETA."""
        out: list[float] = []
        missing = 0
        for s in self.during():
            left = self.end - s.at
            if s.at - self.submitted < 0.1 * self.wall_s or left <= 0:
                continue
            if s.eta_s is None:
                missing += 1
                continue
            out.append(abs(s.eta_s - left) / left)
        return out, missing

    def completion_lag(self) -> float | None:
        done = [s.at for s in self.samples if s.status == "completed"]
        return min(done) - self.last_phase_end if done else None


async def _sample(
    session_id: UUID, period_s: float, timeout_s: float, detail: bool = False
) -> list[Sample]:
    from api.prefect_reader import PrefectUnavailable, default_reader, get_unified_progress

    samples: list[Sample] = []
    deadline = time.monotonic() + timeout_s
    reader = default_reader()
    async with reader.connected():
        while time.monotonic() < deadline:
            tick = time.monotonic()
            try:
                p = await get_unified_progress(session_id)
                snap = (await reader.snapshot(session_id))[0] if detail else None
            except PrefectUnavailable:
                await asyncio.sleep(period_s)
                continue
            samples.append(
                Sample(
                    time.time(),
                    p.overall_progress.percentage,
                    p.overall_progress.eta_seconds,
                    p.overall_status,
                    p.overall_progress.current_phase,
                    p.weights_source,
                    None if snap is None else {
                        key: [phase.status, phase.progress.percentage,
                              None if (c := snap.phase(key).counts) is None else c.describe()]
                        for key in CONTRACT_KEYS for phase in [getattr(p.phases, key)]
                    },
                )
            )  # fmt: skip
            if p.overall_status in TERMINAL:
                return samples
            await asyncio.sleep(max(0.0, period_s - (time.monotonic() - tick)))
    raise TimeoutError(f"session {session_id} did not end within {timeout_s:.0f} s")


def run_session(
    label: str,
    folder: Path,
    data_dir: Path,
    weights: Path,
    cache: Path,
    period_s: float,
    detail: bool = False,
) -> Outcome:
    """Submit a session as the API does and sample its progress until it ends."""
    from photoindex.launch import submit_session

    configure(data_dir, weights)
    seed_face_models(cache, data_dir)  # a one-time install step, not part of a session
    os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = str(data_dir / "results")
    submitted = time.time()
    session_id = submit_session(folder.resolve(), faces=True).session_id
    samples = asyncio.run(_sample(session_id, period_s, timeout_s=3600, detail=detail))
    if samples[-1].status != "completed":
        raise RuntimeError(f"session {session_id} ended {samples[-1].status}")
    runs = session_runs(session_id)
    parent, phases = runs[0], runs[1:]
    assert parent.end is not None
    last = max((r.end for r in phases if r.end is not None), default=parent.end)
    out = Outcome(label, session_id, submitted, parent.end, last, samples)
    out.weights = samples[-1].weights_source
    return out


def trace(o: Outcome, rows: int = 12) -> str:
    """A few samples spread over the run, and the one furthest off: elapsed share,
    percentage, ETA vs actual."""
    during = o.during()
    step = max(1, len(during) // rows)
    picked = during[::step]
    if during and picked[-1] is not during[-1]:
        picked.append(during[-1])
    if during:
        worst = max(zip(o.errors(), during, strict=True), key=lambda pair: abs(pair[0]))[1]
        if worst not in picked:
            picked = sorted([*picked, worst], key=lambda s: s.at)
    return table(
        ["elapsed s", "elapsed %", "reported %", "error pts", "ETA s", "actual left s", "phase"],
        [
            [s.at - o.submitted, 100 * (s.at - o.submitted) / o.wall_s, s.percentage,
             s.percentage - 100 * (s.at - o.submitted) / o.wall_s,
             "-" if s.eta_s is None else s.eta_s, o.end - s.at, s.phase]
            for s in picked
        ],
    )  # fmt: skip


def summary_row(o: Outcome) -> list[object]:
    errs = [abs(e) for e in o.errors()]
    eta, missing = o.eta_errors()
    lag = o.completion_lag()
    return [
        o.label,
        o.weights,
        o.wall_s,
        len(o.during()),
        max(errs) if errs else "-",
        statistics.fmean(errs) if errs else "-",
        f"{100 * statistics.median(eta):.1f}%" if eta else "-",
        f"{len(eta)} ({missing} none)",
        "-" if lag is None else lag,
    ]


def main() -> None:
    """Run the static-weight session, then the calibrated one, and compare their errors."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--size", choices=["normal", "phone", "small"], default="normal")
    parser.add_argument("--period", type=float, default=0.5)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--trace", type=Path, help="write each sample, with every phase's "
                        "counts, here as JSON")  # fmt: skip
    args = parser.parse_args()

    prepare_process()
    folder = photoset.build(args.n, args.size, args.cache)
    bench = workbench("progress", args.cache, "static")
    work, weights, api_url = bench.work, bench.weights, bench.api_url

    header("progress accuracy: seed weights vs calibrated weights")
    print(f"photos: {photoset.describe(folder)}")
    print(f"Prefect: {api_url}; work folder: {work}; sampling every {args.period} s")
    detail = args.trace is not None
    outcomes = [
        run_session(label, folder, work / label, weights, args.cache, args.period, detail)
        for label in ("static", "calibrated")
    ]
    if args.trace is not None:
        args.trace.write_text(json.dumps([
            {"label": o.label, "submitted": o.submitted, "end": o.end, "wall_s": o.wall_s,
             "samples": [{"t": s.at - o.submitted, "pct": s.percentage, "eta": s.eta_s,
                          "status": s.status, "phases": s.detail} for s in o.samples]}
            for o in outcomes
        ], indent=1))  # fmt: skip
    for o in outcomes:
        print(f"\n-- {o.label} run: session {o.session_id}, weights: {o.weights}")
        print(trace(o))
    print()
    print(
        table(
            ["run", "weights source", "wall s", "samples", "max |err| pts", "mean |err| pts",
             "ETA median err", "ETA samples", "completed lag s"],
            [summary_row(o) for o in outcomes],
        )  # fmt: skip
    )
    static, calibrated = outcomes
    if not static.weights.startswith("seed"):
        print(f"WARNING: run 1 did not use the seed weights ({static.weights})")
    if "calibrated" not in calibrated.weights:
        print(f"WARNING: run 2 did not use calibrated weights ({calibrated.weights})")
    s_err = [abs(e) for e in static.errors()]
    c_err = [abs(e) for e in calibrated.errors()]
    s_eta, _ = static.eta_errors()
    c_eta, _ = calibrated.eta_errors()
    if s_err and c_err:
        line = (
            f"calibrated / static: max |err| x{max(c_err) / max(max(s_err), 1e-9):.2f}, "
            f"mean |err| x{statistics.fmean(c_err) / max(statistics.fmean(s_err), 1e-9):.2f}"
        )
        if s_eta and c_eta:
            eta_ratio = statistics.median(c_eta) / max(statistics.median(s_eta), 1e-9)
            line += f", ETA median err x{eta_ratio:.2f}"
        print(line)
    for o in outcomes:
        eta, _ = o.eta_errors()
        lag = o.completion_lag()
        print(
            f"targets ({o.label}): ETA median error "
            f"{'-' if not eta else f'{100 * statistics.median(eta):.1f}%'} "
            f"({'meets' if eta and statistics.median(eta) <= 0.15 else 'misses'} <= 15%), "
            f"completed {'-' if lag is None else f'{lag:.1f} s'} after the last phase "
            f"({'meets' if lag is not None and lag < 3 else 'misses'} < 3 s)"
        )


if __name__ == "__main__":
    main()
