"""The phase table: the one place that names the phases, read by flows, API, CLI and page.

A phase has a key (its status rows and batches), a Prefect subflow, a progress artifact,
a key and a name in the REST contract, labels, the seed's weight, and what its work is
counted in. Adding a phase touches this table and one new phase module.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Literal

SESSION_FLOW = "index-photos"
"""The parent flow: one run of it is one session."""
SESSION_ARTIFACT = "photoindex-session"
"""The session's own progress artifact, on the parent run (the launcher's fast count)."""
PAUSE_TAG = "photoindex-pause-requested"
CANCEL_TAG = "photoindex-cancel-requested"
"""Tags on the parent run by which the API asks a session to pause or to cancel."""


@dataclass(frozen=True)
class PhaseSpec:
    """Everything the layers say about one phase."""

    key: str
    """The phase's own name: status rows, batch tasks, `Phase.name`."""
    flow: str
    """Its Prefect subflow."""
    artifact: str
    """Its progress artifact's key."""
    contract: str
    """Its key under `phases` in the REST contract."""
    name: Literal["training", "face_detection", "clustering"]
    """Its name in the REST contract (`name`, `currentPhase`)."""
    label: str
    """Short, for sentences: "Face detection has reported nothing for 130 s"."""
    title: str
    """For the progress bar and the page, with its icon."""
    icon: str
    seed_weight: float
    """Its share of a session before any session was measured (the seed's 30/65/5)."""
    needs_faces: bool
    """Skipped when a session is started without faces."""
    units: Literal["photos", "library"]
    """What its work is counted in: the photos it has to do, or every library photo."""
    page_label: str
    """Its row in the page's phase details."""
    page_unit: str
    """What the page counts it in."""
    running_status: Literal["running", "processing"] = "running"
    found_by: str | None = None
    """The phase (contract key) whose batches find this one's work as they go, and count
    it (`Counts.looked`, `Counts.found`): the faces in the photos the embed phase decodes.
    This phase's calibrated cost a photo then scales with how much they found."""


PHASES: tuple[PhaseSpec, ...] = (
    PhaseSpec("embed", "embed-images", "photoindex-embed", "training", "training",
              "Training", "🎨 Training - Generating CLIP Embeddings", "🎨", 0.30, False,
              "photos", "Training (CLIP)", "images"),
    PhaseSpec("faces", "detect-faces", "photoindex-faces", "faceDetection", "face_detection",
              "Face detection", "😊 Face Detection - Analyzing Faces", "😊", 0.65, True,
              "photos", "Face Detection", "images", "processing", found_by="training"),
    PhaseSpec("cluster", "cluster-faces", "photoindex-cluster", "clustering", "clustering",
              "Clustering", "🔗 Clustering - Grouping Similar Faces", "🔗", 0.05, True,
              "library", "Clustering", "items"),
)  # fmt: skip
COMPLETED_TITLE = "✓ All Phases Complete"

BY_CONTRACT = {p.contract: p for p in PHASES}
BY_KEY = {p.key: p for p in PHASES}
BY_FLOW = {p.flow: p for p in PHASES}
BY_NAME: dict[str, PhaseSpec] = {p.name: p for p in PHASES}
CONTRACT_KEYS: tuple[str, ...] = tuple(p.contract for p in PHASES)
SEED_WEIGHTS = {p.contract: p.seed_weight for p in PHASES}
"""Each phase's share before any session was measured, by contract key."""


def page_script() -> str:
    """The table as the page's script reads it (served as /phases.js)."""
    table = [asdict(p) for p in PHASES]
    return f"const PHASE_TABLE = {json.dumps(table, ensure_ascii=False)};\n" + (
        f"const COMPLETED_TITLE = {json.dumps(COMPLETED_TITLE, ensure_ascii=False)};\n"
    )
