"""A drivable stand-in for the index-photos flows: each phase advances only when told.

The flows carry the real names (`index-photos`, `embed-images`, `detect-faces`,
`cluster-faces`) and publish real progress artifacts through `ProgressReporter`, so
the API reads them exactly as it reads the real flows. The `folder` parameter names
the `Driver` that steers a session.
"""

from __future__ import annotations

import contextvars
import queue
import threading
import uuid
from dataclasses import dataclass, field
from uuid import UUID

from prefect import flow
from prefect.context import FlowRunContext

from tasks.control import SessionCancelled, checkpoint
from tasks.progress import ProgressReporter

FINISH, FAIL = "finish", "fail"
FINISHED = -1
DRIVERS: dict[str, Driver] = {}


@dataclass
class Driver:
    """Steers one session: `advance`, `finish` or `fail` a phase and wait until it did so."""

    images: int = 100
    faces: bool = True
    face_items: int = 100
    cluster_items: int = 4
    folder: str = field(default_factory=lambda: f"/drivable/{uuid.uuid4().hex}")
    session_id: UUID | None = None
    outcome: str | None = None
    started: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)
    abandoned: threading.Event = field(default_factory=threading.Event)
    reporters: list[ProgressReporter] = field(default_factory=list)
    commands: dict[str, queue.Queue[int | str]] = field(
        default_factory=lambda: {p: queue.Queue() for p in ("embed", "faces", "cluster")}
    )
    acks: dict[str, queue.Queue[int]] = field(
        default_factory=lambda: {p: queue.Queue() for p in ("embed", "faces", "cluster")}
    )

    def start(self, timeout: float = 60) -> UUID:
        """Run the session in a thread (with this context's Prefect settings); return its id."""
        DRIVERS[self.folder] = self
        context = contextvars.copy_context()
        threading.Thread(target=context.run, args=(self._run,), daemon=True).start()
        assert self.started.wait(timeout), "the session did not start"
        assert self.session_id is not None
        return self.session_id

    def _run(self) -> None:
        try:
            state = index_photos(self.folder, self.faces, return_state=True)
            self.outcome = state.type.value
        except SessionCancelled:
            self.outcome = "CANCELLED"
        finally:
            self.ended.set()

    def _wait_ack(self, phase: str, value: int, timeout: float) -> None:
        while True:
            if self.acks[phase].get(timeout=timeout) == value:
                return

    def advance(self, phase: str, to: int, timeout: float = 60) -> None:
        """Move a phase's counts to `to` and publish its artifact; wait until it has."""
        self.commands[phase].put(to)
        self._wait_ack(phase, to, timeout)

    def finish(self, phase: str, timeout: float = 60) -> None:
        """Let a phase finish (artifact at 100, subflow returns)."""
        self.commands[phase].put(FINISH)
        self._wait_ack(phase, FINISHED, timeout)

    def abandon(self) -> None:
        """The test is over: stop the heartbeats (a paused or unfinished session would
        otherwise publish into later tests) and let the phase at work raise."""
        self.abandoned.set()
        for reporter in self.reporters:
            reporter.stop()

    def fail(self, phase: str) -> None:
        """Make a phase raise."""
        self.commands[phase].put(FAIL)

    def run_to_end(self) -> None:
        """Finish every remaining phase and wait for the session to end."""
        for phase in ("embed", "faces", "cluster") if self.faces else ("embed",):
            self.commands[phase].put(FINISH)
        assert self.ended.wait(60), "the session did not end"


def _drive(phase: str, folder: str, total: int) -> int:
    driver = DRIVERS[folder]
    reporter = ProgressReporter(phase, total=total, interval_s=3600)
    driver.reporters.append(reporter)
    reporter.start()
    try:
        return _follow(driver, phase, reporter)
    finally:
        reporter.stop()


def abandon_all() -> None:
    """Abandon every session a test left running."""
    for folder, driver in list(DRIVERS.items()):
        if driver.ended.is_set():
            del DRIVERS[folder]
        else:
            driver.abandon()


def _follow(driver: Driver, phase: str, reporter: ProgressReporter) -> int:
    total = reporter.total
    driver.acks[phase].put(0)
    while True:
        if driver.abandoned.is_set():
            raise RuntimeError(f"{phase} abandoned: its test ended")
        checkpoint()
        try:
            command = driver.commands[phase].get(timeout=0.05)
        except queue.Empty:
            continue
        if command == FAIL:
            raise RuntimeError(f"{phase} exploded on purpose")
        if command == FINISH:
            reporter.advance(processed=max(0, total - reporter.current))
            reporter.finish()
            driver.acks[phase].put(FINISHED)
            return total
        assert isinstance(command, int)
        reporter.advance(processed=command - reporter.current)
        reporter.publish()
        driver.acks[phase].put(command)


@flow(name="embed-images")
def embed_images(folder: str) -> int:
    """Drivable stand-in for the embedding phase."""
    return _drive("embed", folder, DRIVERS[folder].images)


@flow(name="detect-faces")
def detect_faces(folder: str) -> int:
    """Drivable stand-in for face detection."""
    return _drive("faces", folder, DRIVERS[folder].face_items)


@flow(name="cluster-faces")
def cluster_faces(folder: str) -> int:
    """Drivable stand-in for clustering."""
    return _drive("cluster", folder, DRIVERS[folder].cluster_items)


@flow(name="index-photos")
def index_photos(folder: str, faces: bool = True) -> None:
    """Drivable stand-in for the parent flow: one session."""
    driver = DRIVERS[folder]
    context = FlowRunContext.get()
    assert context is not None and context.flow_run is not None
    driver.session_id = context.flow_run.id
    driver.started.set()
    embed_images(folder)
    if faces:
        detect_faces(folder)
        cluster_faces(folder)
