"""The Starlette application: routes, middleware, error handlers and the engine/database lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from engine import ChatEngine, EngineConfig
from server.db_telemetry import instrument
from server.errors import EXCEPTION_HANDLERS
from server.logs import adopt_loggers
from server.metrics import metrics_endpoint
from server.middleware import BodySizeLimitMiddleware
from server.observability import ObservabilityMiddleware
from server.routes.chat import chat_completions
from server.routes.system import healthz, list_models, readyz
from server.settings import Settings
from storage import Database

logger = logging.getLogger("codeface")


def engine_config(settings: Settings, model_path: str) -> EngineConfig:
    return EngineConfig(
        model=model_path,
        served_model_name=settings.served_model_name or model_path.rstrip("/").rsplit("/", 1)[-1],
        dtype=settings.dtype,
        max_model_len=settings.max_model_len,
        gpu_memory_utilization=settings.gpu_memory_utilization,
        kv_cache_space_gib=settings.kv_cache_space_gib,
        enforce_eager=settings.enforce_eager,
        max_num_seqs=settings.max_num_seqs,
        max_num_batched_tokens=settings.max_num_batched_tokens,
        tensor_parallel_size=settings.tensor_parallel_size,
        enable_prefix_caching=settings.enable_prefix_caching,
        enable_chunked_prefill=settings.enable_chunked_prefill,
        load_format=settings.load_format,
        seed=settings.seed,
    )


def create_app(settings: Settings, model_path: str, *, tracing: bool | None = None) -> Starlette:
    """`model_path` is a local model folder, already prepared (see server.cli). `tracing` defaults to whether
    settings name a trace exporter; the process's tracer provider is set up by the caller (server.tracing)."""
    tracing = settings.trace_exporter != "none" if tracing is None else tracing
    engine = ChatEngine(engine_config(settings, model_path))
    database = Database(settings.database_url, pool_size=settings.database_pool_size)
    instrument(database.engine, tracing=tracing)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await engine.start()
        adopt_loggers("vllm")
        # uvicorn binds the socket right after this returns.
        logger.info("CodeFace ready: serving %s (%s, context %d tokens) on http://%s:%d", engine.model_name,
                    model_path, engine.max_model_len, settings.host, settings.port)
        try:
            yield
        finally:
            await engine.shutdown()
            await database.close()

    routes = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(ObservabilityMiddleware, tracing=tracing, access_log=settings.access_log),
            Middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.database = database
    return app
