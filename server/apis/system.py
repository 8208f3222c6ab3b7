"""Probes, version and metrics: GET /health (vLLM's liveness path), /healthz, /readyz, /version, /metrics."""

from __future__ import annotations

import dataclasses
from http import HTTPStatus
from importlib.metadata import version as package_version

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response

from server.apis.endpoint import Endpoint, Method, Operation
from server.apis.params import json_response
from server.exceptions import Unavailable
from server.openapi.schemas import Ready, Status, Version
from server.state import services
from server.telemetry.metrics import registry as metrics_registry

READY_RETRY_AFTER_S = 5
CODEFACE_VERSION = package_version("codeface")
TAG = "system"


async def check_operator(request: Request) -> None:
    client = request.client
    await services(request).operator.check(request.headers.get("authorization", "").encode("latin-1") or None,
                                           client.host if client else None)


@Operation(Method.GET, "/healthz", "The process answers", TAG, response=Status, public=True, errors=())
async def healthz(request: Request) -> Response:
    """The process is alive and its event loop answers."""
    return json_response({"status": "ok"})


@Operation(Method.GET, "/health", "Liveness, as vLLM's: 503 once the engine has died", TAG, response=Status,
           public=True, errors=(HTTPStatus.SERVICE_UNAVAILABLE,))
async def health(request: Request) -> Response:
    """vLLM's liveness probe: 200 while the engine is alive, 503 once it has died (restart this process)."""
    held = services(request)
    if held.lifecycle.engine_dead or not await held.engine.check_health():
        raise Unavailable("the engine is not running", retry_after_s=READY_RETRY_AFTER_S)
    return json_response({"status": "ok"})


@Operation(Method.GET, "/version", "CodeFace's and vLLM's versions", TAG, response=Version, public=True, errors=())
async def version(request: Request) -> Response:
    await check_operator(request)
    return json_response({"version": CODEFACE_VERSION, "vllm_version": services(request).engine.vllm_version})


@Operation(Method.GET, "/readyz", "Engine and database answer: route traffic here", TAG, response=Ready, public=True,
           errors=(HTTPStatus.SERVICE_UNAVAILABLE,))
async def readyz(request: Request) -> Response:
    """The engine and the database both answer: safe to route traffic here."""
    held = services(request)
    if held.lifecycle.draining:
        raise Unavailable("not ready: draining (shutting down)", retry_after_s=READY_RETRY_AFTER_S)
    engine_ok = not held.lifecycle.engine_dead and await held.engine.check_health()
    database_ok = await held.database.ping_shared()
    if not (engine_ok and database_ok):
        problems = [name for name, ok in (("engine", engine_ok), ("database", database_ok)) if not ok]
        raise Unavailable(f"not ready: {', '.join(problems)} unavailable", retry_after_s=READY_RETRY_AFTER_S)
    return json_response({"status": "ready", "model": held.engine.model_name,
                          "engine": dataclasses.asdict(held.engine.stats())})


@Operation(Method.GET, "/metrics", "Prometheus metrics (CodeFace's and vLLM's)", TAG, text="Prometheus text",
           public=True, errors=())
async def metrics(request: Request) -> Response:
    """CodeFace's metrics and vLLM's (vllm:*), in Prometheus text format."""
    await check_operator(request)
    return Response(generate_latest(metrics_registry()), media_type=CONTENT_TYPE_LATEST)


endpoints: tuple[Endpoint, ...] = (health, healthz, version, readyz, metrics)
