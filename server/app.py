"""The Starlette application: routes, middleware, error handlers and the engine/database lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Route

from engine import ChatEngine, EngineConfig
from server.access import AccessControlMiddleware, AccessPolicy
from server.auth import Authenticator
from server.conversations import ConversationService
from server.db_telemetry import instrument
from server.errors import EXCEPTION_HANDLERS
from server.generations import Registry
from server.logs import adopt_loggers
from server.metrics import metrics_endpoint
from server.middleware import BodySizeLimitMiddleware
from server.observability import ObservabilityMiddleware
from server.ratelimit import Quota, RateLimits
from server.routes.auth import create_key, create_user, issue_token, list_keys, revoke_key
from server.routes import conversations as c
from server.routes.chat import chat_completions
from server.routes.system import healthz, list_models, readyz
from server.settings import Settings
from server.tokens import TokenService
from storage import Database

TOKEN_PATH = "/api/v1/auth/token"
DEFAULT_SECRET = "change-me"
MIN_SECRET_LENGTH = 32

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
    if settings.auth_enabled and settings.jwt_algorithm == "HS256" and (
            settings.secret_key == DEFAULT_SECRET or len(settings.secret_key) < MIN_SECRET_LENGTH):
        raise ValueError(f"auth is on: set SECRET_KEY to a random string of at least {MIN_SECRET_LENGTH} "
                         "characters (it signs the access tokens)")
    engine = ChatEngine(engine_config(settings, model_path))
    database = Database(settings.database_url, pool_size=settings.database_pool_size)
    instrument(database.engine, tracing=tracing)
    tokens = TokenService(settings.jwt_algorithm, secret=settings.secret_key, issuer=settings.jwt_issuer,
                          audience=settings.jwt_audience, lifetime_s=settings.access_token_expire_minutes * 60,
                          private_key_file=settings.jwt_private_key_file,
                          public_key_file=settings.jwt_public_key_file)
    default_quota = Quota(settings.requests_per_minute, settings.tokens_per_minute, settings.max_concurrent_streams)
    authenticator = (Authenticator(database, tokens, default_quota, settings.api_key_cache_seconds)
                     if settings.auth_enabled else None)
    policy = AccessPolicy(authenticator, RateLimits(settings.rate_limit_storage,
                                                    fail_open=settings.rate_limit_failure == "open"),
                          {*settings.open_paths, TOKEN_PATH}, engine.model_name, database, settings.default_user,
                          default_quota)
    registry = Registry(settings.conversation_grace_s, heartbeat_s=settings.sse_heartbeat_s)
    conversations = ConversationService(engine, database, registry, flush_s=settings.conversation_flush_s,
                                        default_max_tokens=settings.conversation_max_tokens)
    if not settings.auth_enabled:
        logger.warning("AUTH IS OFF (auth_enabled: false): anyone who can reach this server uses it as %r. "
                       "Set AUTH_ENABLED=true for any shared deployment.", settings.default_user)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        engine.load_backend()
        adopt_loggers("vllm")  # vLLM set its own handler on import: its lines go through ours instead
        await engine.start()
        # uvicorn binds the socket right after this returns.
        logger.info("CodeFace ready: serving %s (%s, context %d tokens) on http://%s:%d", engine.model_name,
                    model_path, engine.max_model_len, settings.host, settings.port)
        try:
            yield
        finally:
            await registry.shutdown()
            await engine.shutdown()
            await database.close()

    routes = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route(TOKEN_PATH, issue_token, methods=["POST"]),
        Route("/api/v1/keys", create_key, methods=["POST"]),
        Route("/api/v1/keys", list_keys, methods=["GET"]),
        Route("/api/v1/keys/{key_id}", revoke_key, methods=["DELETE"]),
        Route("/api/v1/users", create_user, methods=["POST"]),
        Route("/api/v1/conversations", c.create_conversation, methods=["POST"]),
        Route("/api/v1/conversations", c.list_conversations, methods=["GET"]),
        Route("/api/v1/conversations/{conversation_id}", c.get_conversation, methods=["GET"]),
        Route("/api/v1/conversations/{conversation_id}", c.rename_conversation, methods=["PATCH"]),
        Route("/api/v1/conversations/{conversation_id}", c.delete_conversation, methods=["DELETE"]),
        Route("/api/v1/conversations/{conversation_id}/messages", c.post_message, methods=["POST"]),
        Route("/api/v1/conversations/{conversation_id}/stream", c.resume_stream, methods=["GET"]),
        Route("/api/v1/conversations/{conversation_id}/messages/{message_id}/cancel", c.cancel_message,
              methods=["POST"]),
        Route("/api/v1/chat", c.seed_chat, methods=["POST"]),
        Route("/api/v1/stream/{conversation_id}", c.seed_stream, methods=["GET"]),
    ]
    cors = ([Middleware(CORSMiddleware, allow_origins=settings.cors_allow_origins, allow_methods=["*"],
                        allow_headers=["Authorization", "Content-Type", "Last-Event-ID", "X-Request-ID"],
                        expose_headers=["X-Request-ID", "RateLimit-Limit", "RateLimit-Remaining",
                                        "RateLimit-Reset", "Retry-After"])]
            if settings.cors_allow_origins else [])
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(ObservabilityMiddleware, tracing=tracing, access_log=settings.access_log),
            *cors,
            Middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes),
            Middleware(AccessControlMiddleware, policy=policy),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.database = database
    app.state.tokens = tokens
    app.state.authenticator = authenticator
    app.state.limits = policy.limits
    app.state.registry = registry
    app.state.conversations = conversations
    return app
