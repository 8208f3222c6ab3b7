"""Probes, version and metrics: GET /health (vLLM's liveness path), /healthz, /readyz, /version, /metrics."""

from __future__ import annotations

import dataclasses
from importlib.metadata import version as package_version

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from server.apis.params import json_response
from server.exceptions import Unavailable
from server.state import services
from server.telemetry.metrics import registry as metrics_registry

READY_RETRY_AFTER_S = 5
CODEFACE_VERSION = package_version("codeface")


async def check_operator(request: Request) -> None:
    client = request.client
    await services(request).operator.check(request.headers.get("authorization", "").encode("latin-1") or None,
                                           client.host if client else None)


async def healthz(request: Request) -> Response:
    """The process is alive and its event loop answers."""
    return json_response({"status": "ok"})


async def health(request: Request) -> Response:
    """vLLM's liveness probe: 200 while the engine is alive, 503 once it has died (restart this process)."""
    held = services(request)
    if held.lifecycle.engine_dead or not await held.engine.check_health():
        raise Unavailable("the engine is not running", retry_after_s=READY_RETRY_AFTER_S)
    return json_response({"status": "ok"})


async def version(request: Request) -> Response:
    await check_operator(request)
    return json_response({"version": CODEFACE_VERSION, "vllm_version": services(request).engine.vllm_version})


async def readyz(request: Request) -> Response:
    """The engine and the database both answer: safe to route traffic here."""
    held = services(request)
    if held.lifecycle.draining:
        raise Unavailable("not ready: draining (shutting down)", retry_after_s=READY_RETRY_AFTER_S)
    engine_ok = not held.lifecycle.engine_dead and await held.engine.check_health()
    database_ok = await held.database.ping()
    if not (engine_ok and database_ok):
        problems = [name for name, ok in (("engine", engine_ok), ("database", database_ok)) if not ok]
        raise Unavailable(f"not ready: {', '.join(problems)} unavailable", retry_after_s=READY_RETRY_AFTER_S)
    return json_response({"status": "ready", "model": held.engine.model_name,
                          "engine": dataclasses.asdict(held.engine.stats())})


async def metrics(request: Request) -> Response:
    """CodeFace's metrics and vLLM's (vllm:*), in Prometheus text format."""
    await check_operator(request)
    return Response(generate_latest(metrics_registry()), media_type=CONTENT_TYPE_LATEST)


routes: list[BaseRoute] = [
    Route("/health", health, methods=["GET"]),
    Route("/healthz", healthz, methods=["GET"]),
    Route("/version", version, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]
