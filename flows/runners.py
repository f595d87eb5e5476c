"""Where the phases' batch tasks run: threads in the flow's process, or a Dask cluster."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from photoindex.settings import Settings

logger = logging.getLogger(__name__)


def task_runner(settings: Settings) -> TaskRunner[Any]:
    """The task runner `PHOTOINDEX_TASK_RUNNER` asks for: `threads` (default) or `dask`.

    With `dask`, `PHOTOINDEX_DASK_ADDRESS` attaches to a running scheduler; unset, the
    runner starts a local cluster of `PHOTOINDEX_DASK_WORKERS` single-threaded processes.
    """
    if settings.task_runner == "threads":
        # As many threads as run_phase keeps batches in flight.
        return ThreadPoolTaskRunner(max_workers=settings.batches_in_flight)
    from prefect_dask.task_runners import DaskTaskRunner

    if settings.dask_address:
        return DaskTaskRunner(address=settings.dask_address)
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster", cluster_kwargs=_local_cluster_kwargs(settings)
    )


@contextmanager
def without_flow_heartbeats() -> Iterator[None]:
    """Run the flows started in this block without Prefect's flow-run heartbeats.

    They serve crash detection by automations that photoindex does not use: its progress
    artifacts beat every 30 s and the API judges a session by their silence. Each one
    cost a flow run up to 1 s at its end, where the engine joins the heartbeat thread
    (it sleeps in 1 s steps): a parent and three empty subflows took 5.4 s with them
    and 1.7 s without, on the 2-core machine. That is most of a 20-photo session's
    fixed cost.

    Inside a block where they are off already, it does nothing: Prefect's settings are
    rebuilt for each change (23 ms here, alone), and a warm indexer turns them off once for
    all its sessions.
    """
    from prefect.settings import (
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        get_current_settings,
        temporary_settings,
    )

    if get_current_settings().flows.heartbeat_frequency is None:
        yield
        return
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


@contextmanager
def shared_cluster(settings: Settings) -> Iterator[Settings]:
    """Settings whose Dask address is one local cluster that lives for the block.

    A session runs three subflows; each would otherwise start and stop its own local
    cluster (about 5 s each). Threads, or a configured address, pass through unchanged.
    """
    if settings.task_runner != "dask" or settings.dask_address:
        yield settings
        return
    from distributed import LocalCluster

    started = time.monotonic()
    # distributed leaves LocalCluster's constructor untyped.
    cluster = LocalCluster(**_local_cluster_kwargs(settings))  # type: ignore[no-untyped-call]
    with cluster:
        logger.info(
            "local Dask cluster of %d workers at %s started in %.1f s",
            settings.dask_workers,
            cluster.scheduler_address,
            time.monotonic() - started,
        )
        yield settings.model_copy(update={"dask_address": cluster.scheduler_address})


def _local_cluster_kwargs(settings: Settings) -> dict[str, Any]:
    # Processes, not threads: the models hold the GIL in places, and one crashing worker
    # must not take the flow down. No dashboard: it needs bokeh and a free port.
    return {
        "n_workers": settings.dask_workers,
        "threads_per_worker": 1,
        "processes": True,
        "dashboard_address": None,
    }
