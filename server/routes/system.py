"""Probes and model listing: GET /healthz, GET /readyz, GET /v1/models."""

from __future__ import annotations

import dataclasses
import time

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from engine import ChatEngine
from server.errors import APIError
from storage import Database

STARTED_AT = int(time.time())


def json_response(payload: object, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(msgspec.json.encode(payload), status_code=status_code, headers=headers,
                    media_type="application/json")


async def healthz(request: Request) -> Response:
    """The process is alive and its event loop answers."""
    return json_response({"status": "ok"})


async def readyz(request: Request) -> Response:
    """The engine and the database both answer: safe to route traffic here."""
    engine: ChatEngine = request.app.state.engine
    database: Database = request.app.state.database
    engine_ok = await engine.check_health()
    database_ok = await database.ping()
    if not (engine_ok and database_ok):
        problems = [name for name, ok in (("engine", engine_ok), ("database", database_ok)) if not ok]
        raise APIError(503, f"not ready: {', '.join(problems)} unavailable", headers={"Retry-After": "5"})
    return json_response({
        "status": "ready",
        "model": engine.model_name,
        "engine": dataclasses.asdict(engine.stats()),
    })


async def list_models(request: Request) -> Response:
    engine: ChatEngine = request.app.state.engine
    return json_response({
        "object": "list",
        "data": [{
            "id": engine.model_name,
            "object": "model",
            "created": STARTED_AT,
            "owned_by": "codeface",
            "max_model_len": engine.max_model_len,
        }],
    })
