"""Settings: defaults < YAML profile (configs/*.yaml) < .env file < environment variables < command-line overrides,
layered by pydantic-settings sources and parsed in one place."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from engine import EngineConfig, EngineOptions

DATA_DIR = Path(".data")
# The profile being loaded: read by the YAML source, set only while load_settings runs.
_profile: ContextVar[Path | None] = ContextVar("profile", default=None)


class SettingsError(ValueError):
    """A malformed override or profile; the message says which and how to write it."""


class Settings(BaseSettings, EngineOptions):
    """Every key can be set in the YAML profile and overridden by an environment variable of the same name."""

    model_config = SettingsConfigDict(env_file=".env", extra="forbid", protected_namespaces=())

    # HTTP
    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = 1_048_576
    # API processes over the one engine core (vLLM's multi-API-server machinery, as vllm serve --api-server-count):
    # more than one needs limits and reply streams in Redis (rate_limit_storage, reply_streams_url).
    api_processes: int = Field(default=1, ge=1)
    # Balancers whose X-Forwarded-For and X-Forwarded-Proto are trusted (uvicorn's forwarded_allow_ips: addresses or
    # networks, "*" for any): behind one, the login guard, limits and access log see the client's address, not the
    # balancer's. The default trusts a balancer on this machine, as uvicorn does; empty: the headers are ignored.
    forwarded_allow_ips: list[str] = ["127.0.0.1", "::1"]
    # Seconds an idle keep-alive connection is held. Longer than clients' and balancers' own idle limits (httpx and
    # the openai SDK 5 s, aiohttp 15 s, AWS ALB 60 s), so that they close first: at uvicorn's default of 5 s a client
    # reusing a connection as the server closed it got a reset (httpx.ReadError, once in 2,000 posts in CI).
    http_keep_alive_s: int = Field(default=75, ge=1)
    # Host names (no port) that requests may address besides the loopback names (localhost, *.localhost) and IP
    # addresses, which are always allowed: another Host is a 400, so that a web page that rebinds its own name to
    # this server (DNS rebinding) cannot use it. ".example.com": the domain and its subdomains; "*": any host
    # (behind a balancer that checks the host, or with auth on, where a rebinding page holds no credentials).
    allowed_hosts: list[str] = []

    # Logs: JSON lines on stdout by default, or a rotating file
    log_level: str = "info"
    # auto: readable text with colours on a terminal (make serve), JSON lines when the output is not a terminal.
    log_format: Literal["auto", "json", "text"] = "auto"
    log_file: Path | None = None
    log_max_bytes: int = 10_485_760
    log_backup_count: int = 5
    access_log: bool = True

    # Traces: off by default (no-op tracer, zero cost)
    trace_exporter: Literal["none", "console", "otlp-grpc", "otlp-http"] = "none"
    trace_endpoint: str | None = None
    trace_sample_ratio: float = Field(default=1.0, ge=0.0, le=1.0)

    # Model and engine: the engine options come from EngineOptions. model_path unset = the default
    # SmolLM2-135M-Instruct, prepared under model_cache_dir.
    model_path: str | None = None
    served_model_name: str | None = None
    model_cache_dir: Path | None = None
    # LoRA adapters served over the base model, each under its own model name: name -> the adapter's folder (PEFT's
    # layout: adapter_config.json and the weights). Needs enable_lora; see docs/adapters.md.
    lora_adapters: dict[str, str] = {}
    # Adapters loaded or unloaded through the API on another API process or replica are served here within this
    # many seconds (read from the database); 0: only at start.
    adapter_sync_s: float = Field(default=5.0, ge=0)

    # Conversations
    conversation_max_tokens: int = 512      # reply length when a message does not say
    conversation_grace_s: float = 30.0      # a reply with no listener goes on this long, then is cancelled
    conversation_flush_s: float = 1.0       # partial replies are written this often (off the token path)
    conversation_heartbeat_s: float = 5.0   # a running reply's row is touched this often, even without new text
    reply_stale_after_s: float = 30.0       # an in_progress reply without a heartbeat this long is interrupted
    reply_store_timeout_s: float = 600.0    # a reply's final write is retried this long while the database is down
    # What one conversation may hold (messages, and bytes of text): a post past either is refused with 409, so that
    # no conversation grows without bound (a post reads only what its prompt can hold, whatever the size).
    conversation_max_messages: int = Field(default=10_000, ge=2)
    conversation_max_bytes: int = Field(default=32 << 20, ge=1)
    # Event streams: a comment every heartbeat_s keeps idle connections through proxies (nginx, load balancers
    # time out after 60 s by default); a listener waiting for a reply that does not come is closed after
    # sse_idle_timeout_s (0: never) with an event that tells it to reconnect. Caps: open streams in all (503 past
    # it), per key and per user (429); 0 = no cap. Each open stream holds a file descriptor: the open-file limit is
    # checked at start.
    sse_heartbeat_s: float = 15.0
    # Listeners waiting for a reply that may never come (GET /api/v1/stream/{id} between replies, idle tabs): a
    # keep-alive every 45 s, under the 60 s idle timeout of common proxies (nginx, AWS ALB); null = sse_heartbeat_s.
    sse_idle_heartbeat_s: float | None = 45.0
    sse_idle_timeout_s: float = 900.0
    max_sse_listeners: int = 16384
    max_sse_listeners_per_key: int = 256
    max_sse_listeners_per_user: int = 512   # all of a user's keys and tokens together (429 past it); 0 = no cap
    # Unset: a reply's stream lives in the replica generating it (route a conversation to one replica).
    # redis://host:6379/0: replies are shared through Redis, and any replica resumes, cancels or follows any reply.
    reply_streams_url: str | None = None
    # Each call to that Redis waits at most this long (a blocking read: its 2 s block plus this): a hung Redis
    # answers resume, cancel and delete with 503 and Retry-After, and ends mirrored streams with a reconnect event.
    reply_streams_timeout_s: float = Field(default=1.0, gt=0)
    reply_retention_s: float = 300.0        # a finished reply's events stay in memory this long, for re-attaches
    reply_buffer_bytes: int = 4 << 20       # one reply's buffered events at most (the newest are kept)
    reply_buffers_total_bytes: int = 256 << 20  # all buffers together: the oldest finished replies go first
    # Responses API: a stored response (store: true) can be retrieved, listed and chained by previous_response_id
    # this long after it was made (OpenAI keeps 30 days), then it is deleted by a sweep every few minutes.
    # Conversations and their items do not expire.
    responses_retention_days: float = Field(default=30.0, gt=0)

    # Shutdown: on SIGTERM, not ready at once and new generations refused; running ones get this long to finish
    # before they are interrupted (their streams end with an error event, their replies are stored).
    drain_timeout_s: float = 30.0

    # Storage
    database_url: str = f"sqlite+aiosqlite:///{DATA_DIR / 'codeface.db'}"
    database_pool_size: int = 10
    migrate_on_start: bool = True

    # Auth. Off only by this explicit flag; the server then serves everyone as `default_user` and says so loudly.
    auth_enabled: bool = True
    # With auth off, listening beyond loopback needs this explicit flag.
    allow_unauthenticated_network: bool = False
    default_user: str = "local"
    open_paths: list[str] = ["/health", "/healthz", "/readyz", "/version", "/metrics"]
    # With auth on, /metrics and /version (the model, versions, every tenant's load) answer only an admin's
    # credentials or metrics_token; true: anyone who reaches the port, as vllm serve.
    metrics_public: bool = False
    # A bearer token for the metrics scraper alone (Prometheus's `authorization`), at least 32 random characters.
    metrics_token: str | None = None
    secret_key: str = "change-me"
    jwt_algorithm: Literal["HS256", "RS256", "ES256"] = "HS256"
    jwt_private_key_file: Path | None = None   # RS256/ES256: PEM used to sign
    jwt_public_key_file: Path | None = None    # RS256/ES256: PEM used to verify
    jwt_issuer: str = "codeface"
    jwt_audience: str = "codeface-api"
    access_token_expire_minutes: int = 30
    api_key_cache_seconds: float = 30.0       # how long a revoked key may still work on another replica
    # Origins (scheme://host[:port]) whose pages may call the API from a browser, besides the server's own pages:
    # a request with another Origin is a 403, and CORS answers these alone; "*": any origin.
    cors_allow_origins: list[str] = []

    # Rate limits: defaults per key (and per user for JWTs); a key's own values in the database override them.
    rate_limit_storage: str = "memory://"      # or async+redis://127.0.0.1:6379 to share budgets across replicas
    rate_limit_failure: Literal["open", "closed"] = "open"
    requests_per_minute: int | None = 600
    tokens_per_minute: int | None = 400_000
    max_concurrent_streams: int | None = 64
    # The same budgets per user, added up over all of a user's keys and tokens (admins are exempt: they set the
    # limits): minting keys does not multiply a user's budget.
    user_requests_per_minute: int | None = 600
    user_tokens_per_minute: int | None = 400_000
    user_max_concurrent_streams: int | None = 64
    max_keys_per_user: int = 20
    # A limiter storage (Redis) that fails or stops answering costs one timeout, then is skipped for retry_s.
    rate_limit_timeout_s: float = 0.25
    rate_limit_retry_s: float = 5.0
    # tenant: each user's prompts share the prefix cache only with that user's (closes a timing side channel);
    # shared: vllm serve's single cache (more hits across users).
    prefix_cache_isolation: Literal["tenant", "shared"] = "tenant"
    # Fair share of the engine's queue between tenants (users) under overload: auto = on when auth is on. It needs
    # scheduling_policy: priority; off, with scheduling_policy: fcfs, is vllm serve's order exactly.
    fairness: Literal["auto", "on", "off"] = "auto"
    # With fairness on, this share of the engine's sequence slots (max_num_seqs; at least one) is kept free for a
    # tenant that holds none, beside what the other tenants hold, so that another tenant's request never waits for a
    # slot to free; a tenant is never held below an even share of the slots. 0: no reserve.
    fairness_reserve: float = Field(default=0.05, ge=0.0, lt=1.0)
    # Global admission control: past this many sequences in flight (running or queued; a generation counts n),
    # answer 503 at once (with several API processes, each admits its share).
    max_inflight_generations: int = 1024
    # One user's share of that admission (over all its keys and tokens, admins included), in the same unit:
    # sequences, a generation counting n (one per choice, per prompt of a completion). Past it the user gets 429
    # with Retry-After while others still get in; null: no share, one user may fill admission. With several API
    # processes it is counted across them in the limits' Redis (if Redis fails open, each process still holds a
    # user to it alone). Not applied with auth off (every caller is then one user).
    max_inflight_sequences_per_user: int | None = Field(default=256, ge=1)

    # SLO-aware admission (server/generation/slo.py, docs/operations.md): a generation the server estimates would
    # not get its first token within slo_ttft_s, or would push the streams running past slo_tpot_s per output token,
    # is refused at once, before any engine work: 503 with Retry-After (Anthropic's route: 529), or 429 for a tenant
    # holding more than an even share with fairness on. The estimate uses rates measured on this replica; with none
    # yet (a cold start) nothing is refused. null: no budget. A request may tighten them for itself with the headers
    # X-SLO-TTFT-Ms and X-SLO-TPOT-Ms (milliseconds; llm-d's names), never loosen them.
    slo_ttft_s: float | None = Field(default=None, gt=0)
    slo_tpot_s: float | None = Field(default=None, gt=0)
    # Admitted while the estimate is at most this fraction of a budget: the estimate is a mean, a budget holds for
    # each request. Admitting up to the whole budget put the served requests' median TPOT at it (144-149 ms against
    # 150 at 1.5x the knee, p90 1.1-1.2x the median; loadtests/RESULTS.md): about half of them missed it.
    slo_admit_fraction: float = Field(default=0.8, gt=0, le=1)

    # Logins: password guessing is limited per client address and per username from one address (never per username
    # alone: guessing from one address does not lock the owner out elsewhere); each time a budget is spent again
    # within the hour, the block doubles (60 s up to 15 min). The budgets are also counted in-process, so that they
    # hold when the limiter storage is down. argon2's 64 MiB per try is bounded by the hashes computed at once.
    login_attempts_per_minute_per_address: int = 30
    login_attempts_per_minute_per_username: int = 10
    # Requests with credentials that fail (unknown keys, bad tokens) per client address and minute: past it, 429 with
    # Retry-After before any database lookup (a block that doubles on repeats, as for logins).
    failed_auth_per_minute_per_address: int = 60
    max_concurrent_password_hashes: int = 2

    @field_validator("lora_adapters", mode="before")
    @classmethod
    def _adapters_as_json(cls, value: Any) -> Any:
        """`--set lora_adapters={"name": "/path"}` (JSON), as the environment variable is read."""
        if isinstance(value, str):
            try:
                return json.loads(value)
            except json.JSONDecodeError:
                raise ValueError('lora_adapters takes a JSON object: {"name": "/path/to/adapter"}') from None
        return value

    @property
    def fairness_enabled(self) -> bool:
        wanted = self.fairness == "on" or (self.fairness == "auto" and self.auth_enabled)
        return wanted and self.scheduling_policy == "priority"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,  # noqa: ARG003 (pydantic-settings passes it; unused)
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings, dotenv_settings]
        profile = _profile.get()
        if profile is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=profile))
        return tuple(sources)

    def engine_config(self, model_path: str) -> EngineConfig:
        return EngineConfig.for_model(self, model_path, self.served_model_name, fair_share=self.fairness_enabled)


@contextmanager
def _reading(profile: Path | None) -> Iterator[None]:
    token = _profile.set(profile)
    try:
        yield
    finally:
        _profile.reset(token)


def load_settings(config_file: Path | str | None = None, **overrides: Any) -> Settings:
    """Read a profile, then let .env, the environment and `overrides` (None values ignored) win over it."""
    if config_file is not None and not Path(config_file).is_file():
        raise FileNotFoundError(f"config file not found: {config_file}")
    with _reading(Path(config_file) if config_file else None):
        return Settings(**{key: value for key, value in overrides.items() if value is not None})


def parse_override(item: str) -> tuple[str, str]:
    """One `--set KEY=VALUE` item (argparse's `type`): a clear error for anything else."""
    key, separator, value = item.partition("=")
    key = key.strip()
    if not separator or not key:
        raise SettingsError(f"--set takes KEY=VALUE (e.g. --set max_model_len=4096), not {item!r}")
    if key not in Settings.model_fields:
        raise SettingsError(f"--set {key}: no such setting (the keys are the lower-case names in docs/operations.md)")
    return key, value
