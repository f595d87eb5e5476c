"""`photoindex check` reports a damaged data folder in words and with exit code 1."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from photoindex.cli import app
from photoindex.settings import get_settings


@pytest.fixture
def empty_data(tmp_path: Path) -> Iterator[Path]:
    old = os.environ.get("PHOTOINDEX_DATA_DIR")
    os.environ["PHOTOINDEX_DATA_DIR"] = str(tmp_path)
    get_settings.cache_clear()
    yield tmp_path
    if old is None:
        os.environ.pop("PHOTOINDEX_DATA_DIR")
    else:
        os.environ["PHOTOINDEX_DATA_DIR"] = old
    get_settings.cache_clear()


def test_check_passes_on_a_healthy_folder_and_names_a_half_written_file(empty_data: Path) -> None:
    runner = CliRunner()
    healthy = runner.invoke(app, ["check"])
    assert healthy.exit_code == 0, healthy.output
    assert "ok: catalog, crops and vectors agree" in healthy.output

    stray = empty_data / "catalog" / "status" / ".tmp-abc.parquet.part"
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"PAR1 half")
    damaged = runner.invoke(app, ["check"])
    assert damaged.exit_code == 1
    assert ".tmp-abc.parquet.part" in damaged.output
