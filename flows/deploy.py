"""The `index-photos` deployment: whether a worker serves it, and the deploy-time step."""

from __future__ import annotations

import logging
from pathlib import Path

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import WorkPoolStatus
from prefect.client.schemas.responses import DeploymentResponse
from prefect.exceptions import ObjectNotFound

logger = logging.getLogger(__name__)

ENTRYPOINT_FILE = "flows/index_photos.py"


class DeployConfigError(ValueError):
    """`prefect deploy` was run from the wrong folder or without a library to schedule."""


async def worker_online(client: PrefectClient, deployment: DeploymentResponse) -> bool:
    """Whether a worker polls the deployment's work pool (Prefect marks the pool READY)."""
    pool_name = deployment.work_pool_name
    if pool_name is None:
        logger.info("deployment %s has no work pool", deployment.name)
        return False
    try:
        pool = await client.read_work_pool(pool_name)
    except ObjectNotFound:
        logger.info("work pool %s of deployment %s does not exist", pool_name, deployment.name)
        return False
    if pool.status != WorkPoolStatus.READY:
        logger.info("no worker is polling work pool %s (status %s)", pool_name, pool.status)
        return False
    return True


def deploy_paths(library: str | None = None) -> dict[str, str]:
    """Build step of prefect.yaml: the checkout workers run from and the library to schedule."""
    checkout = Path.cwd().resolve()
    if not (checkout / ENTRYPOINT_FILE).is_file():
        raise DeployConfigError(
            f"run `prefect deploy` from the photoindex checkout: {checkout} has no "
            f"{ENTRYPOINT_FILE}"
        )
    if not library:
        raise DeployConfigError(
            "set PHOTOINDEX_LIBRARY to the photo folder the nightly schedule indexes, e.g. "
            "PHOTOINDEX_LIBRARY=~/Pictures prefect --no-prompt deploy --all"
        )
    folder = Path(library).expanduser().resolve()
    if not folder.is_dir():
        raise DeployConfigError(f"PHOTOINDEX_LIBRARY is not a folder: {library}")
    return {"checkout": str(checkout), "library": str(folder)}
