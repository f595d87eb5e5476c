"""Schemathesis over the API's own OpenAPI schema, served for real.

Valid and invalid requests (coverage phase: boundaries and each kind of invalid value;
fuzzing: random ones) must get a documented status, never a 5xx, with a JSON body that
matches the schema; invalid ones must be refused with a 4xx.
"""

from __future__ import annotations

from typing import Any

import pytest

from api.app import create_app
from photoindex.settings import Settings

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is not installed")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import (  # noqa: E402
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

schema = schemathesis.openapi.from_dict(create_app(Settings()).openapi())
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], allow_x00=True
)
schema.config.phases.update(phases=["examples", "coverage", "fuzzing"])
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


@schema.parametrize()  # type: ignore[untyped-decorator]
@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                           HealthCheck.function_scoped_fixture],
)
def test_no_server_errors(case: Any, served_api: str) -> None:
    """Any request gets a documented 2xx or 4xx JSON answer; invalid ones a 4xx."""
    case.call_and_validate(base_url=served_api, timeout=60, checks=CHECKS)
