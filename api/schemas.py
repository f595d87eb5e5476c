"""Every request and response model of the REST API, camelCase on the wire."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

# Limits of the request parameters; a request beyond them is a 422 that names the limit.
MAX_QUERY_CHARS = 500
"""Longest search text. CLIP reads only its first 77 tokens (about 300 characters) anyway."""
MAX_K = 200
"""Most search results per request."""
MAX_FOLDER_CHARS = 4096
"""Longest folder path (Linux's PATH_MAX)."""
MAX_FACE_ID_CHARS = 64
FACE_ID_PATTERN = r"^[A-Za-z0-9_-]+$"
"""Face ids are short ASCII tokens (20 hex digits today), never paths."""
PHOTO_ID_PATTERN = r"^[0-9a-f]{64}$"
"""A photo's id is the SHA-256 of its content, 64 lowercase hex digits: never a path."""
MAX_PERSON_ID_CHARS = 64
PERSON_ID_PATTERN = FACE_ID_PATTERN
"""Person ids are short ASCII tokens ("person-" and 10 hex digits today)."""

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _no_control_characters(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters such as NUL")
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must contain something to search for, not only spaces")
    return value


SearchText = Annotated[
    str,
    Field(min_length=1, max_length=MAX_QUERY_CHARS),
    AfterValidator(_no_control_characters),
    AfterValidator(_not_blank),
]
"""Search text: visible characters, no control characters."""
PathText = Annotated[str, AfterValidator(_no_control_characters)]
"""A file-system path as text: no NUL or other control characters."""

SearchSort = Literal["relevance", "newest", "oldest"]
"""Order of search results: best match first, or by capture time."""
PhaseName = Literal["training", "face_detection", "clustering"]
CurrentPhase = Literal["training", "face_detection", "clustering", "completed"]
PhaseStatus = Literal[
    "pending",
    "running",
    "processing",
    "paused",
    "stalled",
    "cancelling",
    "completed",
    "failed",
    "cancelled",
    "skipped",
]
OverallStatus = Literal[
    "pending", "running", "paused", "stalled", "cancelling", "completed", "failed", "cancelled"
]


class ApiModel(BaseModel):
    """Base of all API models: snake_case in Python, camelCase in JSON."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, serialize_by_alias=True
    )


class ErrorResponse(ApiModel):
    """An error: what went wrong, in words a person can act on."""

    detail: str


class FieldError(ApiModel):
    """One invalid part of a request."""

    loc: list[str | int] = Field(description='Where, e.g. ["query", "k"]')
    msg: str
    type: str = Field(description="pydantic's error type, e.g. less_than_equal")


class ValidationErrorResponse(ApiModel):
    """A 422: the request does not fit the API's limits; `detail` says how, in words."""

    detail: str
    errors: list[FieldError]


class ProgressStats(ApiModel):
    """Counts and speed of one phase."""

    current: int = Field(ge=0)
    total: int = Field(ge=0)
    percentage: float = Field(ge=0, le=100)
    eta_seconds: int | None = None
    images_per_minute: float | None = None
    skipped: int = 0
    failed: int = 0


class PhaseProgress(ApiModel):
    """Progress of a single phase."""

    name: PhaseName
    status: PhaseStatus
    progress: ProgressStats
    started_at: datetime | None = None
    completed_at: datetime | None = None
    message: str | None = Field(default=None, description="Why the phase failed, if it did")


class OverallProgress(ApiModel):
    """Progress across all phases."""

    percentage: float = Field(ge=0, le=100)
    eta_seconds: int | None = None
    current_phase: CurrentPhase


class Phases(ApiModel):
    """The three phases, keyed as the seed's contract keys them."""

    training: PhaseProgress
    # Named like its JSON key so `getattr(phases, "faceDetection")` works too.
    faceDetection: PhaseProgress
    clustering: PhaseProgress


class PhaseWeights(ApiModel):
    """Share of the overall percentage each phase carries (sums to 1)."""

    training: float = Field(ge=0, le=1)
    # Named like its JSON key, as in `Phases`.
    faceDetection: float = Field(ge=0, le=1)
    clustering: float = Field(ge=0, le=1)


class UnifiedProgressResponse(ApiModel):
    """Unified progress of one session across training, face detection and clustering."""

    session_id: UUID
    overall_status: OverallStatus
    overall_progress: OverallProgress
    phases: Phases
    weights: PhaseWeights
    weights_source: str
    warnings: list[str] = Field(default_factory=list)
    updated_at: datetime | None = None


class TrainingProgressResponse(ApiModel):
    """The older phase-1-only progress (training = CLIP embeddings)."""

    session_id: UUID
    status: PhaseStatus
    progress: ProgressStats
    started_at: datetime | None = None
    completed_at: datetime | None = None


class FaceSessionResponse(ApiModel):
    """Face detection and clustering of one session, combined."""

    session_id: UUID
    status: PhaseStatus
    progress: ProgressStats
    face_detection: PhaseProgress
    clustering: PhaseProgress
    started_at: datetime | None = None
    completed_at: datetime | None = None


class SessionSummary(ApiModel):
    """One session in the list of recent sessions."""

    session_id: UUID
    name: str
    folder: str | None
    skip_face_detection: bool
    status: OverallStatus = Field(description="As progress-unified's overallStatus")
    percentage: float = Field(ge=0, le=100, description="As progress-unified's percentage")
    created_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None


class SessionList(ApiModel):
    """Recent sessions, newest first."""

    sessions: list[SessionSummary]


class SessionCreate(ApiModel):
    """Start indexing a folder under one of the configured library roots."""

    folder: PathText = Field(min_length=1, max_length=MAX_FOLDER_CHARS)
    skip_face_detection: bool = False


class SessionCreated(ApiModel):
    """A session that was just started."""

    session_id: UUID
    folder: str
    skip_face_detection: bool
    progress_url: str


class SessionAction(ApiModel):
    """The outcome of a cancel, pause or resume request."""

    session_id: UUID
    action: Literal["cancel", "pause", "resume"]
    overall_status: OverallStatus
    message: str


class SearchHit(ApiModel):
    """One photo that matches the query."""

    path: str
    score: float = Field(description="Cosine similarity to the query, -1..1")
    photo_id: str | None = Field(
        default=None, description="The photo's id (SHA-256 of its content), for `like`"
    )
    taken_at: str | None = Field(
        default=None,
        description="Capture time as wall-clock ISO time (EXIF DateTimeOriginal, else the "
        "file's modification time); null for photos indexed before capture times were kept",
    )
    thumbnail_url: str | None = Field(default=None, description="A small JPEG of the photo")
    payload: dict[str, str | int | float | bool | None] = Field(default_factory=dict)


class SearchResponse(ApiModel):
    """Photos that best match a text or look like a photo, best first unless sorted."""

    query: str | None = Field(default=None, description="The text searched for, if any")
    like: str | None = Field(default=None, description="The photo searched by, if any")
    k: int
    results: list[SearchHit]


class Person(ApiModel):
    """One person: a cluster of faces."""

    person_id: str
    face_count: int
    representative_face_id: str | None
    representative_crop_url: str | None
    sample_crops: list[str] = Field(default_factory=list)


class PersonList(ApiModel):
    """Persons, largest first."""

    persons: list[Person]


class Health(ApiModel):
    """Liveness of the API and its Prefect server."""

    status: Literal["ok"]
    prefect: Literal["ok"]
    prefect_api_url: str | None = None
