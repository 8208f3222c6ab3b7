"""A dependency's outage (a hung or stopped database) escaping a route is a 503 with Retry-After, never a 500."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

from server.errors import DEPENDENCY_DOWN, EXCEPTION_HANDLERS

SECRET = "SELECT secret FROM keys WHERE host=10.0.0.7"
OUTAGES = {
    # What asyncpg's command timeout raises from SQLAlchemy's pre-ping on a hung Postgres.
    "timeout": TimeoutError(),
    "refused": ConnectionRefusedError(111, f"Connect call failed {SECRET}"),
    "operational": OperationalError(SECRET, {}, Exception("connection lost")),
    "interface": InterfaceError(SECRET, {}, Exception("connection is closed")),
}


def raise_outage(request: Request) -> Response:
    raise OUTAGES[request.path_params["kind"]]


def client() -> TestClient:
    routes = [Route(f"{prefix}/{{kind}}", raise_outage, methods=["POST"])
              for prefix in ("/api/v1/conversations", "/v1/chat/completions", "/v1/messages")]
    app = Starlette(routes=routes, exception_handlers=EXCEPTION_HANDLERS)  # type: ignore[arg-type]
    return TestClient(app, raise_server_exceptions=False)


@pytest.mark.parametrize("kind", sorted(OUTAGES))
def test_an_outage_is_503_with_retry_after_in_each_dialect_and_hides_its_text(kind: str) -> None:
    with client() as http:
        seed = http.post(f"/api/v1/conversations/{kind}")
        openai = http.post(f"/v1/chat/completions/{kind}")
        anthropic = http.post(f"/v1/messages/{kind}")
    for response in (seed, openai, anthropic):
        assert response.status_code == 503, response.text
        assert int(response.headers["retry-after"]) > 0
        assert SECRET not in response.text
    assert seed.json()["code"] == 503 and seed.json()["message"] == DEPENDENCY_DOWN
    assert openai.json()["error"]["type"] == "service_unavailable"
    assert anthropic.json() == {"type": "error", "error": {"type": "api_error", "message": DEPENDENCY_DOWN}}


def test_a_busy_pool_keeps_its_own_message() -> None:
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    from server.errors import DATABASE_BUSY, response_for

    response = response_for(PoolTimeout("QueuePool limit of size 10 overflow 10 reached"), "/api/v1/conversations")
    assert response.status_code == 503 and int(response.headers["retry-after"]) > 0
    assert DATABASE_BUSY.encode() in response.body and b"QueuePool" not in response.body
