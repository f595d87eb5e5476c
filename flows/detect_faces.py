"""Subflow 2: detect, align and embed faces; crops and rows into the catalog."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from photoindex.phases import BY_KEY
from tasks.phase import PhaseSummary, run_phase


@flow(name=BY_KEY["faces"].flow, flow_run_name="faces {folder}")
def detect_faces(folder: str) -> PhaseSummary:
    """Find and embed the faces in every photo under `folder`."""
    from tasks.face_inputs import clear_inputs
    from tasks.faces import FacesPhase  # its libraries load with the phase

    phase = FacesPhase(Path(folder))
    summary = run_phase(phase)
    # Each batch deleted the faces the embed phase left for it; what is left is unused.
    clear_inputs(phase.settings)
    return summary


if __name__ == "__main__":
    import sys

    detect_faces(sys.argv[1])
