"""The Starlette application: explicit wiring of engine, database, security and services; routes, middleware,
error handlers and the engine/database lifespan."""

from __future__ import annotations

import gc
import ipaddress
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

from engine import ChatEngine, EngineClient
from server.adapters.catalog import ModelCatalog
from server.adapters.service import AdapterService
from server.apis.anthropic.serving import Messages
from server.apis.codeface.identity.routes import TOKEN_PATH
from server.apis.openai.chat_completions.serving import ChatCompletions
from server.apis.openai.completions.serving import Completions
from server.apis.openai.conversations.service import OpenAIConversations
from server.apis.openai.responses.background import BackgroundResponses
from server.apis.openai.responses.serving import Responses
from server.apis.openai.responses.store import ResponseStore
from server.apis.openai.tokenize.serving import Tokenization
from server.apis.pages import DOCS_PATH, OPENAPI_PATH, STATIC_PREFIX
from server.apis.routing import all_routes
from server.conversations.bus import ReplyBus
from server.conversations.listeners import Listeners
from server.conversations.registry import Registry
from server.conversations.run import Retention
from server.conversations.service import ConversationService
from server.conversations.store import ConversationLimits
from server.conversations.writer import ReplyWriter
from server.errors import EXCEPTION_HANDLERS
from server.generation.fairness import FairShare
from server.generation.generator import Admission, Generator
from server.generation.slo import DEFAULT_ENGINE_SLOTS, Budgets, LoadEstimator, SloAdmission
from server.lifecycle import ApiProcess, Lifecycle
from server.middleware.access import AccessControlMiddleware
from server.middleware.body_size import BodySizeLimitMiddleware
from server.middleware.host_origin import HostOriginMiddleware
from server.middleware.media_type import MediaTypeMiddleware
from server.middleware.observability import ObservabilityMiddleware
from server.middleware.security_headers import SecurityHeadersMiddleware
from server.middleware.slo_headers import TPOT_HEADER, TTFT_HEADER, SloHeadersMiddleware
from server.security.access import AccessPolicy
from server.security.auth import Authenticator
from server.security.budgets import AbuseBudget
from server.security.cache_salt import CacheIsolation, CacheSalter
from server.security.identity import IdentityService
from server.security.login import LoginGuard
from server.security.operator import OperatorEndpoints
from server.security.ratelimit import Quota, RateLimits
from server.security.tokens import TokenService
from server.settings import Settings
from server.state import AppServices
from server.streaming import MiddlewareClass, StreamingApp
from server.telemetry.db_telemetry import instrument
from server.telemetry.logs import adopt_loggers
from storage import Database

DEFAULT_SECRET = "change-me"
MEMORY_STORAGE = "memory://"
MIN_SECRET_LENGTH = 32
# Example values shipped in deploy/, configs/ and the docs, and the words such values are made of: a copied example
# is long enough to pass the length check, and everyone who read the repository knows it.
PLACEHOLDER_SECRETS = frozenset({DEFAULT_SECRET, "replace-with-at-least-32-random-characters", "..."})
PLACEHOLDER_WORDS = ("change-me", "changeme", "replace-with", "replace-me", "placeholder", "your-secret",
                     "example", "random-characters", "xxxxxxxx")
# Pages anyone may load (the API they describe or drive still needs credentials).
PUBLIC_PAGES = frozenset({"/", DOCS_PATH, OPENAPI_PATH})
TOO_MANY_FAILURES = "too many requests with invalid credentials from this address; retry later"
CORS_HEADERS = ["Authorization", "Content-Type", "Last-Event-ID", "X-Request-ID", TTFT_HEADER, TPOT_HEADER]
CORS_EXPOSED = ["X-Request-ID", "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset", "Retry-After"]
# The middleware that event streams' body chunks pass by (StreamingApp): each acts on a response's start message
# alone (status, headers) or answers the request itself, never on a route's body. StreamingApp refuses to be built with
# any other: one that reads or rewrites response bodies would silently miss every stream.
START_ONLY_MIDDLEWARE: frozenset[MiddlewareClass] = frozenset({
    ObservabilityMiddleware, SecurityHeadersMiddleware, CORSMiddleware, MediaTypeMiddleware, HostOriginMiddleware,
    BodySizeLimitMiddleware, AccessControlMiddleware, SloHeadersMiddleware})

logger = logging.getLogger("codeface")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_placeholder_secret(secret: str) -> bool:
    lowered = secret.strip().lower()
    return lowered in PLACEHOLDER_SECRETS or any(word in lowered for word in PLACEHOLDER_WORDS)


def check_settings(settings: Settings) -> None:
    """Refuse to start in a configuration that would be unsafe without saying so."""
    if settings.auth_enabled and settings.jwt_algorithm == "HS256" and (
            is_placeholder_secret(settings.secret_key) or len(settings.secret_key) < MIN_SECRET_LENGTH):
        raise ValueError(f"auth is on: set SECRET_KEY to a random string of at least {MIN_SECRET_LENGTH} "
                         "characters (it signs the access tokens), not an example value, e.g. "
                         "SECRET_KEY=$(openssl rand -base64 32)")
    if settings.metrics_token is not None and (is_placeholder_secret(settings.metrics_token)
                                               or len(settings.metrics_token) < MIN_SECRET_LENGTH):
        raise ValueError(f"set METRICS_TOKEN to a random string of at least {MIN_SECRET_LENGTH} characters, not an "
                         "example value, or leave it unset")
    if not settings.auth_enabled and not is_loopback(settings.host) and not settings.allow_unauthenticated_network:
        raise ValueError(f"auth is off and the server would listen on {settings.host}, beyond this machine: turn "
                         "auth on (AUTH_ENABLED=true), or say that this is meant with "
                         "ALLOW_UNAUTHENTICATED_NETWORK=true")
    if settings.api_processes > 1:
        shared = {"rate_limit_storage": not settings.rate_limit_storage.startswith(MEMORY_STORAGE),
                  "reply_streams_url": bool(settings.reply_streams_url)}
        if missing := [name for name, ok in shared.items() if not ok]:
            raise ValueError(f"api_processes: {settings.api_processes} needs limits and reply streams shared between "
                             f"the processes: set {' and '.join(name.upper() for name in missing)} to a Redis URL "
                             "(async+redis://host:6379 for rate_limit_storage, redis://host:6379/0 for "
                             "reply_streams_url), or run one API process")
    if settings.lora_adapters and not settings.enable_lora:
        raise ValueError(f"lora_adapters declares {len(settings.lora_adapters)} adapter(s): set enable_lora: true "
                         "(and max_lora_rank at least their rank)")
    if settings.fairness == "on" and settings.scheduling_policy != "priority":
        raise ValueError("fairness: on needs scheduling_policy: priority (under fcfs the engine ignores priorities)")
    if settings.fairness == "auto" and settings.auth_enabled and not settings.fairness_enabled:
        logger.warning("fairness is off: auth is on but scheduling_policy is fcfs; set SCHEDULING_POLICY=priority "
                       "for a fair share of the engine between tenants")


def build_services(settings: Settings, engine: EngineClient, database: Database, tokens: TokenService,
                   authenticator: Authenticator | None, limits: RateLimits, policy: AccessPolicy,
                   api_process: ApiProcess | None = None) -> AppServices:
    retention = Retention(seconds=settings.reply_retention_s, reply_bytes=settings.reply_buffer_bytes,
                          total_bytes=settings.reply_buffers_total_bytes)
    listeners = Listeners(heartbeat_s=settings.sse_heartbeat_s, idle_timeout_s=settings.sse_idle_timeout_s,
                          max_total=settings.max_sse_listeners, max_per_caller=settings.max_sse_listeners_per_key,
                          idle_heartbeat_s=settings.sse_idle_heartbeat_s,
                          max_per_user=settings.max_sse_listeners_per_user)
    bus = (ReplyBus(settings.reply_streams_url, settings.reply_retention_s, settings.reply_streams_timeout_s)
           if settings.reply_streams_url else None)
    registry = Registry(settings.conversation_grace_s, listeners, retention, bus)
    # Each API process admits its share of the cap (the least-loaded accept spreads connections evenly).
    per_process_cap = -(-settings.max_inflight_generations // settings.api_processes)
    # With auth off every caller is one user: a share of admission would only cap the whole server. With several
    # API processes a user's sequences are counted in Redis under this server's id too: connections do not land
    # evenly enough for each process to hold a fixed part of the share.
    per_user = settings.max_inflight_sequences_per_user if settings.auth_enabled else None
    shared_count = ((api_process.server_id if api_process else uuid.uuid4().hex) if settings.api_processes > 1
                    else None)
    # The estimator sees this process's generations only: its share of the engine's sequence slots.
    slots = -(-(settings.max_num_seqs or DEFAULT_ENGINE_SLOTS) // settings.api_processes)
    slo = SloAdmission(Budgets(settings.slo_ttft_s, settings.slo_tpot_s), LoadEstimator(slots),
                       fair=settings.fairness_enabled, admit_fraction=settings.slo_admit_fraction)
    engine.on_decode_step(slo.estimator.decode_step)
    admission = Admission(engine, limits, max_inflight=per_process_cap, max_per_tenant=per_user, slo=slo,
                          server_id=shared_count)
    fair = FairShare(settings.fairness_enabled, engine_slots=settings.max_num_seqs,
                     reserve_fraction=settings.fairness_reserve)
    generator = Generator(engine, admission, fair)
    models = ModelCatalog(engine)
    salter = CacheSalter(CacheIsolation(settings.prefix_cache_isolation), settings.secret_key)
    writer = ReplyWriter(database, flush_s=settings.conversation_flush_s,
                         heartbeat_s=settings.conversation_heartbeat_s, store_timeout_s=settings.reply_store_timeout_s)
    conversations = ConversationService(
        engine=engine, models=models, database=database, registry=registry, generator=generator, writer=writer,
        default_max_tokens=settings.conversation_max_tokens, stale_after_s=settings.reply_stale_after_s,
        salter=salter, limits=ConversationLimits(max_messages=settings.conversation_max_messages,
                                                 max_bytes=settings.conversation_max_bytes))
    response_store = ResponseStore(database, conversations, retention=timedelta(days=settings.responses_retention_days),
                                   context_tokens=lambda: engine.max_model_len)
    responses = Responses(engine, models, generator, settings.sse_heartbeat_s, salter, response_store)
    background = BackgroundResponses(responses, response_store, registry, flush_s=settings.conversation_flush_s,
                                     heartbeat_s=settings.conversation_heartbeat_s,
                                     store_timeout_s=settings.reply_store_timeout_s,
                                     stale_after_s=settings.reply_stale_after_s,
                                     database_settled=conversations.database_settled)
    return AppServices(settings=settings, engine=engine, models=models,
                       adapters=AdapterService(models, database, settings.lora_adapters), database=database,
                       limits=limits, registry=registry, generator=generator,
                       # Without LoRA nothing can be loaded: no database round every adapter_sync_s per process.
                       lifecycle=Lifecycle(settings.drain_timeout_s,
                                           settings.adapter_sync_s if settings.enable_lora else 0.0,
                                           leads=api_process is None or api_process.leads),
                       chat=ChatCompletions(engine, models, generator, settings.sse_heartbeat_s, salter),
                       messages=Messages(engine, models, generator, settings.sse_heartbeat_s, salter),
                       completions=Completions(engine, models, generator, salter),
                       tokenization=Tokenization(engine, models),
                       responses=responses,
                       conversations=conversations,
                       openai_conversations=OpenAIConversations(database, conversations),
                       response_store=response_store, background_responses=background,
                       identity=IdentityService(
                           database, tokens, authenticator, max_keys_per_user=settings.max_keys_per_user,
                           login_guard=LoginGuard(limits, per_address=settings.login_attempts_per_minute_per_address,
                                                  per_username=settings.login_attempts_per_minute_per_username,
                                                  concurrent_hashes=settings.max_concurrent_password_hashes)),
                       operator=OperatorEndpoints(policy, public=settings.metrics_public, token=settings.metrics_token))


def create_app(settings: Settings, model_path: str, *, tracing: bool | None = None,
               engine: EngineClient | None = None, api_process: ApiProcess | None = None) -> Starlette:
    """`model_path` is a local model folder, already prepared (see server.cli). `tracing` defaults to whether
    settings name a trace exporter; the process's tracer provider is set up by the caller (server.telemetry.tracing).
    `engine`: a ready-made engine (the fast test tier passes a fake one); by default vLLM's, started in the
    lifespan. `api_process`: which of the server's API processes this is, where it has several."""
    tracing = settings.trace_exporter != "none" if tracing is None else tracing
    check_settings(settings)
    engine = engine or ChatEngine(settings.engine_config(model_path))
    database = Database(settings.database_url, pool_size=settings.database_pool_size)
    instrument(database.engine, tracing=tracing)
    tokens = TokenService(settings.jwt_algorithm, secret=settings.secret_key, issuer=settings.jwt_issuer,
                          audience=settings.jwt_audience, lifetime_s=settings.access_token_expire_minutes * 60,
                          private_key_file=settings.jwt_private_key_file,
                          public_key_file=settings.jwt_public_key_file)
    default_quota = Quota(settings.requests_per_minute, settings.tokens_per_minute, settings.max_concurrent_streams)
    user_quota = Quota(settings.user_requests_per_minute, settings.user_tokens_per_minute,
                       settings.user_max_concurrent_streams)
    authenticator = (Authenticator(database, tokens, default_quota, settings.api_key_cache_seconds, user_quota)
                     if settings.auth_enabled else None)
    limits = RateLimits(settings.rate_limit_storage, fail_open=settings.rate_limit_failure == "open",
                        timeout_s=settings.rate_limit_timeout_s, retry_s=settings.rate_limit_retry_s)
    failures = AbuseBudget(limits, settings.failed_auth_per_minute_per_address, TOO_MANY_FAILURES)
    policy = AccessPolicy(authenticator, database, settings.default_user, default_quota, failures)
    held = build_services(settings, engine, database, tokens, authenticator, limits, policy, api_process)
    if not settings.auth_enabled:
        logger.warning("AUTH IS OFF (auth_enabled: false): anyone who can reach this server uses it as %r. "
                       "Set AUTH_ENABLED=true for any shared deployment.", settings.default_user)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        engine.load_backend()
        adopt_loggers("vllm")  # vLLM set its own handler on import: its lines go through ours instead
        await engine.start()
        await held.adapters.start()
        await limits.storage.warm_up()
        freeze_startup_heap()  # again: the engine client and the tokenizer are built now
        # uvicorn binds the socket right after this returns.
        held.lifecycle.start(held)
        logger.info("CodeFace ready: serving %s (%s, context %d tokens) on http://%s:%d", engine.model_name,
                    model_path, engine.max_model_len, settings.host, settings.port)
        try:
            yield
        finally:
            await held.lifecycle.stop()
            await held.registry.shutdown()
            await held.conversations.writer.final_writes.drain(settings.drain_timeout_s)
            await engine.shutdown()
            await database.close()

    cors = ([Middleware(CORSMiddleware, allow_origins=settings.cors_allow_origins, allow_methods=["*"],
                        allow_headers=CORS_HEADERS, expose_headers=CORS_EXPOSED)]
            if settings.cors_allow_origins else [])
    app = StreamingApp(
        routes=all_routes(),
        middleware=[
            Middleware(ObservabilityMiddleware, tracing=tracing, access_log=settings.access_log),
            Middleware(SecurityHeadersMiddleware, pages=PUBLIC_PAGES, prefixes=(STATIC_PREFIX,),
                       inline_styles=frozenset({DOCS_PATH})),
            # CORS first: the refusals below reach an allowed origin's page with its CORS headers.
            *cors,
            Middleware(MediaTypeMiddleware, form_paths=frozenset({TOKEN_PATH})),
            Middleware(HostOriginMiddleware, allowed_hosts=settings.allowed_hosts,
                       allowed_origins=settings.cors_allow_origins),
            Middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes),
            Middleware(AccessControlMiddleware, policy=policy, limits=limits,
                       open_paths={*settings.open_paths, TOKEN_PATH, *PUBLIC_PAGES}, open_prefixes=(STATIC_PREFIX,),
                       model=engine.model_name),
            Middleware(SloHeadersMiddleware),
        ],
        start_only=START_ONLY_MIDDLEWARE,
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.state.services = held
    freeze_startup_heap()
    return app


def freeze_startup_heap() -> None:
    """As vllm serve does after start-up: what is built by now (torch, vLLM and their modules: millions of objects)
    is marked static, so that the garbage collector's full collections stop scanning it. Unfrozen, one full collection
    took 200-400 ms of the event loop on 2 cores (a login flood's allocations set it off: /healthz 270-430 ms)."""
    gc.collect()
    gc.freeze()
