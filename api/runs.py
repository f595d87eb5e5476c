"""Prefect's rows as the progress calculation and the calibration read them.

A session is one `index-photos` flow run; its phases are its child runs, each with a
progress artifact whose description carries the phase's counts. Nothing here sends a
request: `api.prefect_reader` fetches, these functions translate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from prefect.client.schemas.objects import Artifact, FlowRun

from photoindex.phases import BY_CONTRACT
from tasks.progress import Counts

EPOCH = datetime.min.replace(tzinfo=UTC)

Phases = tuple[dict[str, FlowRun], dict[str, Artifact]]
"""A session's latest run of each phase and each one's latest artifact, by contract key
(the session's own artifact under `session`)."""


@dataclass(frozen=True)
class RunState:
    """What Prefect says about one flow run."""

    state_type: str
    start_time: datetime | None = None
    end_time: datetime | None = None
    state_time: datetime | None = None
    message: str | None = None
    created: datetime | None = None

    @property
    def duration_s(self) -> float | None:
        if self.start_time is None or self.end_time is None:
            return None
        return max(0.0, (self.end_time - self.start_time).total_seconds())


def utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def run_state(run: FlowRun) -> RunState:
    """The calculation's view of a Prefect flow run."""
    state = run.state
    return RunState(
        state_type=run.state_type.value if run.state_type is not None else "PENDING",
        start_time=utc(run.start_time),
        end_time=utc(run.end_time),
        state_time=utc(state.timestamp) if state is not None else None,
        message=state.message if state is not None else None,
        created=utc(run.created),
    )


def session_start(created: datetime | None, session: Counts | None) -> datetime | None:
    """When a session began for its user: when they asked (the command's start, the
    POST), as the launcher recorded it, else when its run was created."""
    if session is not None and session.requested > 0:
        asked = datetime.fromtimestamp(session.requested, UTC)
        return asked if created is None else min(asked, created)
    return created


def counts_of(artifact: Artifact | None) -> Counts | None:
    if artifact is None:
        return None
    counts = Counts.parse(artifact.description)
    if counts is None and isinstance(artifact.data, int | float):
        # No counts in the description: fall back to the artifact's bare percentage.
        return Counts(current=int(artifact.data), total=100)
    return counts


def latest_artifacts(
    phase_runs: dict[str, FlowRun], artifacts: Sequence[Artifact]
) -> dict[str, Artifact]:
    """Per phase: the most recently updated progress artifact of that phase's run."""
    out: dict[str, Artifact] = {}
    for phase, run in phase_runs.items():
        key = BY_CONTRACT[phase].artifact
        mine = [a for a in artifacts if a.flow_run_id == run.id and a.key == key]
        if mine:
            out[phase] = max(mine, key=lambda a: utc(a.updated) or EPOCH)
    return out
