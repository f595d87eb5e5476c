"""Shared set-up of the phase benchmarks: environment, model weights, Prefect, RSS, tables.

Every benchmark prints its figures as ratios against a baseline measured in the same
run, because the 2-core machine is shared and absolute timings drift between runs.
Environment variables are set before the project's settings are first read
(`photoindex.settings.get_settings` is cached) and before Prefect is imported.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from tests.loopback import free_port

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = Path(tempfile.gettempdir()) / "photoindex-bench"
CLIP_ARCH = "ViT-B-32"
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def prepare_process() -> None:
    """Offline, quiet, and this checkout first on the path (also for child processes)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    path = os.environ.get("PYTHONPATH", "")
    if str(ROOT) not in path.split(os.pathsep):
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), path) if p)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


def clip_weights(cache: Path, arch: str = CLIP_ARCH) -> Path:
    """ViT-B-32 with seeded random weights, saved once as safetensors (same compute as real)."""
    dest = cache / "clip" / f"{arch}-random-seed0.safetensors"
    if dest.is_file():
        return dest
    import open_clip
    import torch
    from safetensors.torch import save_file

    dest.parent.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = open_clip.create_model(arch, pretrained=None)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    tmp = dest.with_name(dest.name + ".part")
    save_file(state, str(tmp))
    tmp.replace(dest)
    return dest


def configure(data_dir: Path, weights: Path, **extra: str) -> None:
    """Point the project's settings at a data folder and the local CLIP weights."""
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {
        "PHOTOINDEX_DATA_DIR": str(data_dir),
        "PHOTOINDEX_CLIP_MODEL": CLIP_ARCH,
        "PHOTOINDEX_CLIP_PRETRAINED": str(weights),
    }
    env.update({f"PHOTOINDEX_{k.upper()}": v for k, v in extra.items()})
    os.environ.pop("PHOTOINDEX_CLIP_CONFIG", None)
    os.environ.update(env)
    if "photoindex.settings" in sys.modules:
        from photoindex.settings import get_settings

        get_settings.cache_clear()


def seed_face_models(cache: Path, data_dir: Path) -> None:
    """Copy the converted face models into a fresh data folder, so no run pays the conversion."""
    from tasks.models.onnx_fix import prepare_face_models

    detector, encoder = prepare_face_models(cache / "face-models")
    models = data_dir / "models"
    models.mkdir(parents=True, exist_ok=True)
    for path in (detector, encoder):
        if not (models / path.name).exists():
            shutil.copy2(path, models / path.name)



def start_prefect(server_dir: Path) -> tuple[str, subprocess.Popen[bytes] | None, Path]:
    """A real `prefect server` started the way the CLI starts it, on a free port: its API
    URL, its process (None when one is configured) and its log."""
    if "prefect" in sys.modules:
        raise RuntimeError("start the Prefect server before importing prefect")
    from photoindex.prefect_server import ensure_prefect_api
    from photoindex.settings import Settings

    settings = Settings(data_dir=server_dir, prefect_port=free_port(), prefect_api_url=None)
    return (*ensure_prefect_api(settings, wait_s=180), settings.prefect_server_log)


def server_retries(log: Path) -> tuple[int, int]:
    """Writes our Prefect server retried itself (its log's lines saying so), and the tries
    they took; (0, 0) while it has no log."""
    from photoindex.prefect_app import RETRIED

    if not log.is_file():
        return 0, 0
    lines = [line for line in log.read_text(errors="replace").splitlines() if RETRIED in line]
    tries = 0
    for line in lines:  # "done on try N" when it went through, else "refused N times"
        found = re.search(r"done on try (\d+)", line) or re.search(r"refused (\d+) times", line)
        tries += int(found.group(1)) if found else 0
    return len(lines), tries


@dataclasses.dataclass
class Workbench:
    """What every session benchmark stands on: a work folder, CLIP weights, a Prefect server."""

    work: Path
    weights: Path
    api_url: str
    server: subprocess.Popen[bytes] | None
    server_log: Path


def workbench(name: str, cache: Path, data: str) -> Workbench:
    """The set-up the session benchmarks share, in the order it needs: settings point at
    `work/data` before anything reads them, and the server starts before prefect is imported."""
    weights = clip_weights(cache)
    work = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    configure(work / data, weights)
    api_url, server, server_log = start_prefect(work / "server")
    return Workbench(work, weights, api_url, server, server_log)


# --- process memory -------------------------------------------------------------------------


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE_SIZE


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants, now."""
    kids = _children()
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            total += _rss(p)
        except OSError:
            continue
        todo.extend(kids.get(p, []))
    return total


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process and all its descendants,
    including the children they have already reaped."""
    kids = _children()
    ticks, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
        todo.extend(kids.get(p, []))
    return ticks / os.sysconf("SC_CLK_TCK")


class RssSampler:
    """Samples the RSS of a process tree every `period_s` seconds in a thread; keeps the peak."""

    def __init__(self, pid: int | None = None, period_s: float = 0.2) -> None:
        self.pid = pid if pid is not None else os.getpid()
        self.period_s = period_s
        self.peak = 0
        self.samples: list[tuple[float, int]] = []  # (epoch seconds, bytes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = tree_rss(self.pid)
            if rss:
                self.peak = max(self.peak, rss)
                self.samples.append((time.time(), rss))
            self._stop.wait(self.period_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def max_rss_self() -> int:
    """Peak RSS of this process so far (getrusage), in bytes."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# --- Prefect runs ---------------------------------------------------------------------------


def summary_times(summary: Any) -> dict[str, float]:
    """The timing fields of a PhaseSummary (whatever the current version names them)."""
    if not dataclasses.is_dataclass(summary) or isinstance(summary, type):
        return {}
    values = dataclasses.asdict(summary)
    return {
        k: float(v)
        for k, v in values.items()
        if k != "seconds" and k.endswith("_s") and isinstance(v, int | float)
    }


async def _cached_task_runs(flow_run_id: UUID) -> int:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async with get_client() as client:
        runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return sum(1 for r in runs if r.state is not None and r.state.name == "Cached")


def cached_task_runs(flow_run_id: UUID) -> int:
    """How many task runs of a flow run took a cached result instead of computing."""
    import asyncio

    return asyncio.run(_cached_task_runs(flow_run_id))


@dataclasses.dataclass
class RunTimes:
    """Start and end of a flow run (epoch seconds), with its name and state."""

    name: str
    flow: str
    state: str
    start: float | None
    end: float | None

    @property
    def seconds(self) -> float | None:
        return self.end - self.start if self.start is not None and self.end is not None else None


def _epoch(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


async def _session_runs(session_id: UUID) -> list[RunTimes]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    async with get_client() as client:
        parent = await client.read_flow_run(session_id)
        children = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[session_id])
            )
        )
        out = []
        children.sort(key=lambda r: _epoch(r.start_time) or _epoch(r.created) or 0.0)
        for run in [parent, *children]:
            flow = await client.read_flow(run.flow_id)
            out.append(
                RunTimes(
                    run.name,
                    flow.name,
                    run.state_type.value if run.state_type else "?",
                    _epoch(run.start_time),
                    _epoch(run.end_time),
                )
            )
        return out


def session_runs(session_id: UUID) -> list[RunTimes]:
    """The session's parent run first, then its phase runs in start order."""
    import asyncio

    return asyncio.run(_session_runs(session_id))


# --- output ---------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain aligned text table."""
    cells = [[str(h) for h in headers], *[[_cell(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [
        "  ".join(_align(c, w, i) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _align(text: str, width: int, column: int) -> str:
    return text.ljust(width) if column == 0 else text.rjust(width)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def mb(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:.0f} MB"


@contextmanager
def timed(into: dict[str, float], key: str) -> Iterator[None]:
    """Add the block's wall time to `into[key]`."""
    started = time.perf_counter()
    try:
        yield
    finally:
        into[key] = into.get(key, 0.0) + time.perf_counter() - started


def git_head() -> str:
    """The checkout's commit and whether its tracked files differ from it."""
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "log", "-1", "--format=%h %s"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" (+ uncommitted changes)" if dirty else "")


def header(title: str) -> None:
    """What ran where: the benchmark, the commit, the machine's cores and load."""
    load = os.getloadavg()
    print(f"== {title}")
    print(f"code: {git_head()}")
    print(
        f"cpus: {os.cpu_count()}  load avg: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}  "
        f"python: {sys.version.split()[0]}"
    )
