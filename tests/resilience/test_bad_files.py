"""Odd and broken files through a whole session: what tests/flows does not already assert.

tests/flows/test_index_photos.py indexes `make_bad_cases` in-process and checks that each
bad file is recorded with its reason and that the embed artifact counts skips. Here the
same files go through a session process the product's way, without the permission bypass
a root test process has (so the unreadable file really is unreadable), and the checks are
the ones left: every valid odd file indexed exactly once, nothing else skipped, the API at
100 % with the skipped and failed counts of both photo phases, and an intact catalog.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.prefect_reader import PrefectReader
from photoindex.settings import Settings
from tasks.discover import hash_file
from tests.environ import environ
from tests.loopback import LOOPBACK
from tests.photos import BadCase, make_bad_cases
from tests.resilience.helpers import (
    ChildSession,
    assert_healthy,
    child_env,
    flow_run_state,
    seed_face_models,
    snapshot,
)

pytestmark = pytest.mark.usefixtures("prefect_harness", "data_dir")

PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2


def _without_permission_bypass() -> None:
    """In the child: give up root's right to read any file, as an ordinary user has none."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def _start_unprivileged(folder: Path, data: Path, api_url: str) -> ChildSession:
    """A session created with `create_session` and run as `start_session_process` runs it."""
    from photoindex.launch import create_session

    seed_face_models(data)
    session_id = asyncio.run(create_session(folder))
    (data / "logs").mkdir(parents=True, exist_ok=True)
    log = open(data / "logs" / f"session-{session_id}.log", "ab")  # noqa: SIM115
    with log, environ(**child_env(data, api_url)):
        proc = subprocess.Popen(
            [sys.executable, "-m", "photoindex.runner", str(session_id)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=os.environ.copy(),
            start_new_session=True,
            preexec_fn=_without_permission_bypass if os.geteuid() == 0 else None,
        )
    return ChildSession(session_id, proc, Settings(data_dir=data))


def _shown(path: str) -> str:
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def test_bad_files_in_a_session_process(
    prefect_api_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Each valid odd file indexed once, each bad one skipped with its reason, API at 100 %."""
    folder = tmp_path_factory.mktemp("odd")
    cases = make_bad_cases(folder)
    locked = str(folder / "locked.jpg")
    cases[locked] = BadCase("chmod 000 JPEG", "rejected", "permission denied")
    child = _start_unprivileged(folder, tmp_path_factory.mktemp("odd-data"), prefect_api_url)
    try:
        assert child.wait(300) == 0, child.log
    finally:
        child.stop()
    assert flow_run_state(child.session_id)[0] == "COMPLETED"
    settings = child.settings
    from tasks.catalog import Catalog

    rows = Catalog(settings).query("SELECT sha256, path, status, reason FROM images")
    valid = {p: c for p, c in cases.items() if c.outcome == "indexed"}
    bad = {_shown(p): c for p, c in cases.items() if c.outcome in ("rejected", "skipped at decode")}

    # Every valid odd file once: one row and one vector per content, nothing valid skipped.
    indexed = Counter(r["sha256"] for r in rows if r["status"] == "indexed")
    shas = {p: hash_file(p) for p in valid}
    for path, case in valid.items():
        assert indexed[shas[path]] == 1, case.what
    assert set(indexed) == set(shas.values())
    assert snapshot(settings).points.__len__() == len(indexed)
    # Every bad file once, with its reason in words; nothing else skipped, nothing failed.
    skipped = {r["path"]: r["reason"] for r in rows if r["status"] == "skipped"}
    assert set(skipped) == set(bad)
    for path, case in bad.items():
        assert skipped[path] and skipped[path].startswith(case.reason), (case.what, skipped[path])
        assert "Traceback" not in skipped[path] and len(skipped[path]) < 300, case.what
    assert not [r for r in rows if r["status"] not in ("indexed", "skipped")]
    faces = Catalog(settings).query(
        "SELECT status, count(*) AS n FROM status WHERE phase = 'faces' GROUP BY status"
    )
    assert {r["status"]: r["n"] for r in faces} == {"indexed": len(indexed), "skipped": len(bad)}

    # The API: completed, 100 %, and each photo phase counts the skipped files, none failed.
    api_settings = Settings(prefect_api_url=prefect_api_url)
    reader = PrefectReader(api_settings, cache_ttl_s=0, calibration_sessions=0)
    with TestClient(create_app(api_settings, reader), base_url=LOOPBACK) as client:
        answer = client.get(f"/api/v1/training/sessions/{child.session_id}/progress-unified")
    assert answer.status_code == 200, answer.text
    progress = answer.json()
    assert progress["overallStatus"] == "completed"
    assert progress["overallProgress"]["percentage"] == 100.0
    for phase in ("training", "faceDetection"):
        stats = progress["phases"][phase]["progress"]
        assert stats["percentage"] == 100.0, phase
        assert stats["current"] == stats["total"] == len(indexed) + len(bad), (phase, stats)
        assert (stats["skipped"], stats["failed"]) == (len(bad), 0), (phase, stats)
    assert_healthy(settings)
