"""Subflow 3: group the catalog's faces into persons."""

from __future__ import annotations

from prefect import flow

from photoindex.phases import BY_KEY
from tasks.phase import PhaseSummary, run_phase


@flow(name=BY_KEY["cluster"].flow, flow_run_name="cluster faces")
def cluster_faces() -> PhaseSummary:
    """Cluster every face of the current face model into persons."""
    from tasks.cluster import ClusterPhase  # its libraries load with the phase

    return run_phase(ClusterPhase())


if __name__ == "__main__":
    cluster_faces()
