"""The read API fuzzed by schemathesis from its own OpenAPI document (/api/openapi.json).

Every operation gets generated requests (valid and not), sent to the Flask app itself
(WSGI, no server), with an API token and some mail in the projection. Checks: no 5xx, and
every answer (status, content type, body, headers) matches the document. A bounded number
of examples per operation keeps it under a minute.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.api_support import insert_message

API_TOKEN = "schemathesis-api-token"
EXAMPLES = int(os.environ.get("DISTRIBMAIL_FUZZ_EXAMPLES", "60"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


@pytest.fixture
def api_app(make_app, db):
    now = datetime.now(UTC)
    for n, status in enumerate(["delivered", "opened", "hard_bounced", "clicked", None]):
        insert_message(db, now - timedelta(hours=n), status=status, tags=["devis", "relance"])
    app = make_app(DISTRIBMAIL_API_TOKENS=API_TOKEN, DISTRIBMAIL_PROJECTOR="off")
    app.testing = False  # an exception must come back as the 500 a client would see
    return app


def fuzz(operation, headers: dict[str, str], tried: dict[str, int]) -> None:
    label = f"{operation.method.upper()} {operation.path}"
    tried[label] = 0

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=not os.environ.get("DISTRIBMAIL_FUZZ_RANDOM"),
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(case=operation.as_strategy())
    def call(case) -> None:
        case.call_and_validate(headers=headers, checks=CHECKS)
        tried[label] += 1

    call()


def test_read_api_matches_its_openapi_document(api_app):
    schema = schemathesis.openapi.from_wsgi("/api/openapi.json", api_app)
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/api/messages", "/api/messages/{id}"}, [
        op.path for op in operations
    ]
    tried: dict[str, int] = {}
    for operation in operations:
        fuzz(operation, headers, tried)
    print(f"\nSCHEMATHESIS requests per operation: {tried}")
    assert all(tried.values())
