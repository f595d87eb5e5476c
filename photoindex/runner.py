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
    from prefect.client.schemas.responses import OrchestrationResult

logger = logging.getLogger(__name__)


def claim(session_id: UUID, route: str = "") -> bool:
    """Move a created session to Running; False if it must not run (cancelled, or taken).

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
            return False
        if run.state_type == StateType.SCHEDULED:
            taken: OrchestrationResult[Any] = client.set_flow_run_state(session_id, Pending())
            if taken.state is None or taken.state.type != StateType.PENDING:
                logger.warning("session %s was taken by another runner", session_id)
                return False
        if route and not launch_route(run.tags):
            client.update_flow_run(session_id, tags=[*run.tags, LAUNCH_TAG + route])
        result: OrchestrationResult[Any] = client.set_flow_run_state(session_id, Running())
    accepted = result.state is not None and result.state.type == StateType.RUNNING
    if not accepted:
        logger.warning("session %s could not start: %s", session_id, result.details)
    return accepted


def run_session(session_id: UUID) -> bool:
    """Execute a claimed session's parent flow here; True when it completed."""
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow

    from flows.index_photos import index_photos
    from flows.runners import without_flow_heartbeats

    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(session_id)
    with without_flow_heartbeats():
        state = run_flow(
            index_photos, flow_run=flow_run, parameters=flow_run.parameters, return_type="state"
        )
    return bool(getattr(state, "is_completed", lambda: False)())


def main(argv: list[str]) -> int:
    """Claim, then run, the session whose id is given."""
    from tasks.progress import publish_session

    session_id = UUID(argv[0])
    if not claim(session_id):
        return 1
    publish_session(session_id, stage="starting")
    return 0 if run_session(session_id) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
