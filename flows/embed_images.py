"""Subflow 1: CLIP embeddings of every photo, into Qdrant."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from photoindex.phases import BY_KEY
from tasks.phase import PhaseSummary, run_phase


@flow(name=BY_KEY["embed"].flow, flow_run_name="embed {folder}")
def embed_images(folder: str, faces: bool = False) -> PhaseSummary:
    """Embed every photo under `folder` with CLIP; with `faces`, find faces on the same decode."""
    from tasks.embed import EmbedPhase  # its libraries load with the phase

    return run_phase(EmbedPhase(Path(folder), faces=faces))


if __name__ == "__main__":
    import sys

    embed_images(sys.argv[1])
