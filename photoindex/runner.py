"""Run one created session: `python -m photoindex.runner SESSION_ID` (the cold route).

Its first act, before anything heavy is imported (the flows import torch, open_clip,
onnxruntime and hdbscan only in the phase that needs each), is to claim the run: a
session cancelled before it started is never run, and one that starts reads Running at
once, with its stage in the session's artifact.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any
from uuid import UUID

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun
    from prefect.client.schemas.responses import OrchestrationResult

logger = logging.getLogger(__name__)


def claim(session_id: UUID, route: str = "") -> FlowRun | None:
    """Move a created session to Running and return its run; None if it must not run
    (cancelled, or taken).

    A scheduled run (the deployment's nightly one) is moved to Pending first: Prefect
    refuses that to a second taker, so a worker and a warm indexer never both run it.
    `route` tags a run that has no launch route yet (one the scheduler created).
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.states import Pending, Running

    from photoindex.launch import LAUNCH_TAG, launch_route
    from photoindex.phases import CANCEL_TAG

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(session_id)
        if run.state_type not in {StateType.PENDING, StateType.SCHEDULED} or CANCEL_TAG in run.tags:
            logger.warning("session %s is %s: not running it", session_id, run.state_type)
            return None
        if run.state_type == StateType.SCHEDULED:
            taken: OrchestrationResult[Any] = client.set_flow_run_state(session_id, Pending())
            if taken.state is None or taken.state.type != StateType.PENDING:
                logger.warning("session %s was taken by another runner", session_id)
                return None
        if route and not launch_route(run.tags):
            run.tags = [*run.tags, LAUNCH_TAG + route]
            client.update_flow_run(session_id, tags=run.tags)
        result: OrchestrationResult[Any] = client.set_flow_run_state(session_id, Running())
    if result.state is None or result.state.type != StateType.RUNNING:
        logger.warning("session %s could not start: %s", session_id, result.details)
        return None
    run.state = result.state  # what Prefect now holds: the run need not be read again
    return run


def run_session(flow_run: FlowRun) -> bool:
    """Execute a claimed session's parent flow here; True when it completed."""
    from prefect.flow_engine import run_flow

    from flows.index_photos import index_photos
    from flows.runners import without_flow_heartbeats

    with without_flow_heartbeats():
        state = run_flow(
            index_photos, flow_run=flow_run, parameters=flow_run.parameters, return_type="state"
        )
    return bool(getattr(state, "is_completed", lambda: False)())


def main(argv: list[str]) -> int:
    """Claim, then run, the session whose id is given."""
    from tasks.progress import publish_session

    session_id = UUID(argv[0])
    flow_run = claim(session_id)
    if flow_run is None:
        return 1
    publish_session(session_id, stage="starting")
    return 0 if run_session(flow_run) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
