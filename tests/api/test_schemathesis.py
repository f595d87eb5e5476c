"""Schemathesis over the API's own OpenAPI schema, served for real: never a 5xx."""

from __future__ import annotations

from typing import Any

import pytest

from api.app import create_app
from photoindex.settings import Settings

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is not installed")
from hypothesis import HealthCheck, settings  # noqa: E402

schema = schemathesis.openapi.from_dict(create_app(Settings()).openapi())


@schema.parametrize()  # type: ignore[untyped-decorator]
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                           HealthCheck.function_scoped_fixture],
)
def test_no_server_errors(case: Any, served_api: str) -> None:
    """Any request the schema allows gets a 2xx or 4xx answer, never a 5xx."""
    response = case.call(base_url=served_api, timeout=60)
    assert response.status_code < 500, (case.method, case.formatted_path, response.text)
