"""A wrong setting is one line naming the variable and the form it wants, exit code 2."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from photoindex.cli import app
from photoindex.settings import Settings, get_settings
from tests.environ import environ

CHECKOUT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("value", "roots"),
    [
        ("/photos", [Path("/photos")]),
        (f"/photos{os.pathsep}/more photos{os.pathsep}", [Path("/photos"), Path("/more photos")]),
        ('["/photos", "/a:b"]', [Path("/photos"), Path("/a:b")]),
        ("", []),
    ],
)
def test_library_roots_take_a_path_list_or_json(value: str, roots: list[Path]) -> None:
    with environ(PHOTOINDEX_LIBRARY_ROOTS=value):
        assert Settings().library_roots == roots


@pytest.fixture
def fresh_settings() -> Iterator[None]:
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.mark.usefixtures("fresh_settings")
@pytest.mark.parametrize(
    "command",
    [["serve"], ["check"], ["persons"], ["search", "a dog"], ["index", "."], ["gc"],
     ["watch", "00000000-0000-0000-0000-000000000000"], ["prefect-env"]],
)
@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("PHOTOINDEX_PREFECT_PORT", "forty", "expected a whole number"),
        ("PHOTOINDEX_LIBRARY_ROOTS", '["/photos"', "or a JSON list"),
        ("PHOTOINDEX_TASK_RUNNER", "ray", "expected one of threads, dask"),
        ("PHOTOINDEX_CLIP_PRECISION", "float16", "expected one of auto, float32, bfloat16"),
        ("PHOTOINDEX_API_TOKEN", "short-secret", "at least 16 characters"),
    ],
)
def test_every_command_names_a_wrong_setting_in_one_line(
    command: list[str], variable: str, value: str, says: str
) -> None:
    with environ(**{variable: value}):
        result = CliRunner().invoke(app, command)
    assert result.exit_code == 2, result.output
    [line] = result.output.strip().splitlines()
    assert line.startswith(f"error: {variable}") and says in line, line
    if "TOKEN" in variable:
        assert value not in line  # a secret is never echoed


def test_the_installed_command_prints_no_traceback(tmp_path: Path) -> None:
    broken = {"PHOTOINDEX_LIBRARY_ROOTS": '["/photos"', "PHOTOINDEX_DATA_DIR": str(tmp_path)}
    env = os.environ | broken
    done = subprocess.run(
        [sys.executable, "-m", "photoindex.cli", "serve"],
        cwd=CHECKOUT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "pydantic" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: PHOTOINDEX_LIBRARY_ROOTS='[\"/photos\"' is invalid (Expecting ',' delimiter: "
        f"line 1 column 11 (char 10)); expected items separated by {os.pathsep!r}, or a JSON "
        'list such as ["/photos"]'
    ]
