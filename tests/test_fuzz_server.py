"""Fuzzing the whole HTTP API from its OpenAPI document with schemathesis, against the
shared real server (Ray Serve + vLLM).

The document is `docs/openapi.json` (`frugal openapi`; `test_openapi_unit.py` keeps it
equal to what the gateway serves at `/openapi.json`), read at collection so that every
operation is its own test. Each gets bounded generated requests, valid and invalid; each
answer must be no server error (5xx), a status and content type the document declares,
a body matching the declared schema (the OpenAI error shape for errors), and come
within the timeout (no hang).
"""

from __future__ import annotations

from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

pytestmark = [pytest.mark.server, pytest.mark.slow]

DOCUMENT = Path(__file__).parents[1] / "docs" / "openapi.json"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
#: Examples per operation: enough for every operation's branches, bounded in time.
EXAMPLES = 25

schema = schemathesis.openapi.from_path(str(DOCUMENT))


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_every_operation_answers_within_its_contract(case, server) -> None:
    case.call_and_validate(base_url=server.root_url, checks=CHECKS, timeout=60)
