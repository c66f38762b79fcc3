"""Fuzz every documented operation from the OpenAPI spec: no 5xx, responses match the schema."""

import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

# What the API promises: never a 5xx, and every response is documented and shaped as documented.
# (Acceptance of schema-valid data is not among them: a valid body can name a run that is absent.)
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def test_api_never_fails_and_matches_its_schema(client: TestClient, base_model: str) -> None:
    client.post("/v1/probe-sets", json={"name": "p", "domain": "ood", "items": [{"prompt": "1+1="}]})
    client.post("/v1/runs", json={"name": "r", "base_model": base_model, "probe_sets": ["p"]})
    headers = {"Authorization": client.headers["Authorization"]}  # a write token
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15

    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def fuzz(case) -> None:
            case.call_and_validate(headers=headers, checks=CHECKS)

        fuzz()
