"""Subflow 1: CLIP embeddings of every photo, into Qdrant."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from prefect import flow

from photoindex.phases import BY_KEY
from tasks.phase import PhaseSummary, run_phase

if TYPE_CHECKING:
    from tasks.embed import EmbedPhase


@flow(name=BY_KEY["embed"].flow, flow_run_name="embed {folder}")
def embed_images(folder: str, faces: bool = False) -> PhaseSummary:
    """Embed every photo under `folder` with CLIP; with `faces`, find faces on the same decode."""
    return run_phase(embed_phase(folder, faces))


def embed_phase(folder: str, faces: bool) -> EmbedPhase:
    """The phase this flow runs; a warm indexer builds it too, to read ahead for it."""
    from tasks.embed import EmbedPhase  # its libraries load with the phase

    return EmbedPhase(Path(folder), faces=faces)


if __name__ == "__main__":
    import sys

    embed_images(sys.argv[1])
