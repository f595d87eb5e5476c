"""Run one created session: `python -m photoindex.runner SESSION_ID`."""

from __future__ import annotations

import asyncio
import logging
import sys
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.flow_engine import run_flow

logger = logging.getLogger(__name__)


async def _read(session_id: UUID) -> FlowRun:
    async with get_client() as client:
        return await client.read_flow_run(session_id)


def main(argv: list[str]) -> int:
    """Execute the parent flow run whose id is given."""
    from flows.index_photos import index_photos

    flow_run = asyncio.run(_read(UUID(argv[0])))
    state = run_flow(
        index_photos, flow_run=flow_run, parameters=flow_run.parameters, return_type="state"
    )
    return 0 if getattr(state, "is_completed", lambda: False)() else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
