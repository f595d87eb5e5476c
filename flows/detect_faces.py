"""Subflow 2: detect, align and embed faces; crops and rows into the catalog."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from photoindex.phases import BY_KEY
from tasks.phase import PhaseSummary, run_phase


@flow(name=BY_KEY["faces"].flow, flow_run_name="faces {folder}")
def detect_faces(folder: str) -> PhaseSummary:
    """Find and embed the faces in every photo under `folder`."""
    from tasks.faces import FacesPhase  # its libraries load with the phase

    return run_phase(FacesPhase(Path(folder)))


if __name__ == "__main__":
    import sys

    detect_faces(sys.argv[1])
