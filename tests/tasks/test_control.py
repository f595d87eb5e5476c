"""The flows' side of pause and cancel: how a phase's run finds the session it belongs to,
which its checkpoints read for pause and cancel requests."""

from __future__ import annotations

from typing import NoReturn, cast

import pytest
from prefect import flow
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.context import FlowRunContext
from prefect.runtime import flow_run

from tasks import control


class _NoPrefect:
    """A client that fails the test if it is asked anything."""

    def __getattr__(self, name: str) -> NoReturn:
        raise AssertionError(f"Prefect was asked: {name}")


@flow
def phase_run(ask_prefect: bool) -> str:
    context = FlowRunContext.get()
    assert context is not None and context.flow_run is not None
    if not ask_prefect:
        return str(control._session_id(cast(SyncPrefectClient, _NoPrefect()), context.flow_run))
    with get_client(sync_client=True) as client:
        return str(control._session_id(client, context.flow_run))


@flow
def session_run(ask_prefect: bool, declared: bool) -> tuple[str, str]:
    own = flow_run.get_id()
    with control.in_session(own if declared else None):
        return str(own), phase_run(ask_prefect)


pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_a_phase_run_in_a_declared_session_knows_it_without_asking_prefect() -> None:
    session, seen = session_run(ask_prefect=False, declared=True)
    assert seen == session


def test_a_phase_run_outside_a_declared_session_looks_its_session_up() -> None:
    session, seen = session_run(ask_prefect=True, declared=False)
    assert seen == session


def test_the_declared_session_ends_with_its_block() -> None:
    session_run(ask_prefect=False, declared=True)
    assert control._current_session.get() is None
    with pytest.raises(AssertionError, match="Prefect was asked"):
        session_run(ask_prefect=False, declared=False)
