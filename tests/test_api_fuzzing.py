"""API fuzzing: schemathesis generates requests (valid and invalid) from /openapi.json and sends them to the real
server (auth on, real engine, Postgres, Redis); every answer must have a documented status and content type,
conform to its schema, and never be a server error. Generation is bounded (max_tokens at most 4, n at most 2) so
that the budget of examples fits the CI run."""

from __future__ import annotations

from typing import Any

import hypothesis
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from server.openapi import OPERATIONS

# Routes whose bodies say how much to generate (the seed's /api/v1/chat uses the server's short default).
GENERATION_PATHS = {"/v1/chat/completions", "/v1/completions", "/api/v1/conversations/{conversation_id}/messages"}
MAX_TOKENS = 4
EXAMPLES_PER_OPERATION = 15
CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance, content_type_conformance]


@pytest.fixture(scope="module")
def api_schema(server_url: str) -> Any:
    return schemathesis.openapi.from_url(f"{server_url}/openapi.json")


def bounded(body: Any) -> Any:
    """What a generation may cost: a few tokens, few choices."""
    if isinstance(body, dict):
        requested = body.get("max_tokens")
        if requested is None or isinstance(requested, int):
            body["max_tokens"] = min(requested or MAX_TOKENS, MAX_TOKENS)
        body.pop("max_completion_tokens", None)
        if isinstance(body.get("n"), int):
            body["n"] = min(max(body["n"], 1), 2)
    return body


@pytest.mark.parametrize("method, path", [(op.method.upper(), op.path) for op in OPERATIONS])
def test_generated_requests_never_fail(api_schema: Any, auth_headers: dict[str, str], method: str,
                                       path: str) -> None:
    operation = api_schema[path][method]

    @hypothesis.settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(case=operation.as_strategy())
    def exchange(case: schemathesis.Case) -> None:
        if path in GENERATION_PATHS:
            case.body = bounded(case.body)
        response = case.call_and_validate(headers=auth_headers, timeout=120, checks=CHECKS)
        assert response.status_code < 500, response.text  # what CHECKS hold, said where a reader looks

    exchange()
