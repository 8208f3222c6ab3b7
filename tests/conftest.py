"""Shared fixtures: one real CodeFace server (real CPU engine, real model) per test session, and real databases."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from loadtests.ports import free_port

from servers import EARLY, REPORTS, SpawnedServer, finish_stopping

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
POSTGRES_ADMIN_URL = os.environ.get("TEST_POSTGRES_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")
SERVER_START_TIMEOUT_S = 300
CONVERSATION_MAX_TOKENS = 48  # the test server's replies that do not say: short, so that the suite stays fast


def unavailable(reason: str) -> None:
    """Skip on a developer's machine; fail in CI, where every real part must be there."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a missing service fails the run)")
    pytest.skip(reason)


class ThreadedServer:
    """The real app on a real uvicorn (uvloop, httptools) and socket, in a thread of the test process, so that
    tests can read its in-memory spans. The engine core runs in its own process, as in production."""

    def __init__(self, app: object, port: int, *, lifespan: str = "on") -> None:
        import uvicorn

        config = uvicorn.Config(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools",
                                log_config=None, access_log=False, timeout_graceful_shutdown=5, lifespan=lifespan)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="codeface-test-server", daemon=True)

    def start(self, url: str, probe: str = "/readyz") -> None:
        self.thread.start()
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if not self.thread.is_alive():
                pytest.fail("the test server stopped during start-up; see the log above")
            try:
                if httpx.get(f"{url}{probe}", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        pytest.fail(f"the test server was not ready in {SERVER_START_TIMEOUT_S} s")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failing test's report gets the logs of the servers and services running in processes of their own (their
    warnings and errors): the CI's output is all that is kept of a run, and a server's log often says why."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if report.when == "call" and report.failed:
        for title, tail in list(REPORTS.items()):
            report.sections.append((title, tail()))


def pytest_collection_finish(session: pytest.Session) -> None:
    EARLY.plan("priority_server", build_priority_server)
    EARLY.keep_only({name for item in session.items for name in getattr(item, "fixturenames", ())})


@pytest.fixture(scope="session", autouse=True)
def spawned_servers_end_with_the_session() -> Iterator[None]:
    """Set up first, so torn down last: servers launched early and never taken stop, and every stop_soon
    finishes before pytest exits."""
    yield
    EARLY.stop_untaken()
    finish_stopping()


@pytest.fixture(scope="session")
def span_exporter() -> InMemorySpanExporter:
    """Every span the test server records (tracing is on for the test server, with the SDK's in-memory exporter)."""
    from server.telemetry.tracing import setup_tracing

    exporter = InMemorySpanExporter()
    setup_tracing("none", exporter=exporter)
    return exporter


@pytest.fixture(scope="session")
def redis_url() -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(REDIS_URL)
    try:
        with socket.create_connection((parts.hostname, parts.port or 6379), timeout=2) as conn:
            conn.sendall(b"PING\r\n")
            answer = conn.recv(16)
    except OSError as exc:
        unavailable(f"Redis is not reachable at {REDIS_URL}: {exc}")
    if not answer.startswith(b"+PONG"):
        unavailable(f"{REDIS_URL} did not answer PING like Redis: {answer!r}")
    return REDIS_URL


@pytest.fixture(scope="session")
def server_database_url(postgres_url: str) -> str:
    """The test server's database: Postgres, as in production (SQLite serves the replicas' tests too)."""
    from storage import upgrade_database

    upgrade_database(postgres_url)
    return postgres_url


@pytest.fixture(scope="session")
def sqlite_server_database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    from storage import upgrade_database

    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('server') / 'codeface.db'}"
    upgrade_database(url)
    return url


def server_settings(database_url: str, redis_url: str, **overrides: object):
    """The CPU profile with auth on and rate limits in Redis, as a production replica would run."""
    from server.settings import load_settings

    values = {"max_body_bytes": 65536, "database_url": database_url, "auth_enabled": True,
              "conversation_max_tokens": CONVERSATION_MAX_TOKENS,
              # Tools with tool_choice auto: vLLM's hermes parser and a Hermes-style template that renders what the
              # model's own template renders for chats without tools.
              "tool_call_parser": "hermes", "enable_auto_tool_choice": True,
              "chat_template": ROOT / "configs/templates/smollm2_hermes_tools.jinja",
              "max_inflight_generations": 24,
              # 46k tokens of KV cache is plenty here; the servers of their own that run beside it need the memory.
              "kv_cache_space_gib": 1,
              # vllm serve's order (fairness off): the refusal of `priority` under fcfs is tested on this server;
              # tests/test_fairness.py and test_scheduling.py share a priority server of their own.
              "scheduling_policy": "fcfs", "conversation_grace_s": 3.0,
              "sse_heartbeat_s": 2.0, "sse_idle_heartbeat_s": 2.0,
              # The suite logs in often from one address; the login-flood test sets the defaults back.
              "login_attempts_per_minute_per_address": 10_000, "login_attempts_per_minute_per_username": 1_000,
              "failed_auth_per_minute_per_address": 10_000,  # the suite's 401 checks all come from one address
              "metrics_public": True,  # the suite reads /metrics and /version as an open scrape (vllm serve's way)
              "secret_key": "test-secret-key-with-enough-entropy-0123456789",
              "rate_limit_storage": redis_url, **overrides}
    return load_settings(ROOT / "configs/cpu.yaml", **values)


UNLIMITED = {"requests_per_minute": 0, "tokens_per_minute": 0, "max_concurrent_streams": 0}  # 0 = unlimited


def user_with_key(settings: Any, username: str, *, is_admin: bool = False,
                  limits: dict[str, int] = UNLIMITED) -> str:
    """A new user and an API key of theirs, made with the admin CLI's functions (the one way to issue a key)."""
    from server import admin

    asyncio.run(admin.create_user(settings, username, f"{username}-password-1", is_admin))
    return asyncio.run(admin.create_key(settings, username, "tests", None, limits))


@pytest.fixture(scope="session")
def admin_key(server_database_url: str, redis_url: str) -> str:
    """An admin's API key with no limits of its own, for tests that are not about limits."""
    settings = server_settings(server_database_url, redis_url)
    return user_with_key(settings, f"admin-{uuid.uuid4().hex[:8]}", is_admin=True)


@pytest.fixture(scope="session")
def auth_headers(admin_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {admin_key}"}


@dataclass
class RunningServer:
    url: str
    app: Any  # the Starlette app, for tests that inject faults into its engine


@pytest.fixture(scope="session")
def running_server(server_database_url: str, redis_url: str,
                   span_exporter: InMemorySpanExporter) -> Iterator[RunningServer]:
    """One real server for the session: CPU engine, the default model, auth on, Postgres, Redis rate limits."""
    from server.app import create_app
    from server.cli import resolve_model

    port = free_port()
    # Replies shared through Redis: any replica started with the same reply_streams_url follows them
    # (tests/test_shared_replies.py); replicas without it hold only their own (the in-memory path).
    settings = server_settings(server_database_url, redis_url, port=port, reply_streams_url=redis_url)
    app = create_app(settings, resolve_model(settings), tracing=True)
    server = ThreadedServer(app, port)
    url = f"http://127.0.0.1:{port}"
    server.start(url)
    try:
        yield RunningServer(url, app)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def client(server_url: str, admin_key: str) -> openai.OpenAI:
    """The official openai SDK as the admin, without its retries (a test sees each answer as it came)."""
    return openai.OpenAI(base_url=f"{server_url}/v1", api_key=admin_key, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def http(server_url: str, auth_headers: dict[str, str]) -> Iterator[httpx.Client]:
    """Plain HTTP as the admin, for what the SDK does not send (raw bodies, headers, the seed's routes)."""
    with httpx.Client(base_url=server_url, headers=auth_headers, timeout=120) as client:
        yield client


@pytest.fixture(scope="session")
def server_url(running_server: RunningServer) -> str:
    return running_server.url


PRIORITY_SECRET = "priority-secret-key-with-enough-entropy-0123"
PRIORITY_TENANTS = ("heavy", "light", "late", "urgent")


@dataclass
class PriorityServer:
    url: str
    keys: dict[str, str]  # tenant -> an unlimited API key of that tenant (a user of its own)


def build_priority_server(request: pytest.FixtureRequest) -> SpawnedServer:
    """A server whose engine runs one sequence at a time (requests queue) and orders its queue by priority; auth
    on, so fair share between tenants is on (fairness: auto); SQLite; keep-alives every 0.3 s; admission small."""
    from storage import upgrade_database

    folder = request.getfixturevalue("tmp_path_factory").mktemp("priority")
    database_url = f"sqlite+aiosqlite:///{folder}/priority.db"
    upgrade_database(database_url)
    settings = {"auth_enabled": True, "secret_key": PRIORITY_SECRET, "scheduling_policy": "priority",
                "max_num_seqs": 1, "kv_cache_space_gib": 1, "sse_heartbeat_s": 0.3,
                "user_max_concurrent_streams": 1000, "user_requests_per_minute": 100_000,
                "user_tokens_per_minute": 10 ** 9, "metrics_public": True,
                # Admission of 32 sequences, 16 of them for one user (tests/test_fairness.py fills a user's share).
                "max_inflight_generations": 32, "max_inflight_sequences_per_user": 16}
    return SpawnedServer(free_port(), folder / "server.log", database_url=database_url, settings=settings)


@pytest.fixture(scope="session")
def priority_server(request: pytest.FixtureRequest) -> Iterator[PriorityServer]:
    """tests/test_fairness.py and tests/test_scheduling.py share it: one engine start fewer."""
    from server.settings import load_settings

    with EARLY.taken("priority_server", request) as server:
        settings = load_settings(None, database_url=server.database_url, secret_key=PRIORITY_SECRET)
        yield PriorityServer(server.url, {tenant: user_with_key(settings, tenant) for tenant in PRIORITY_TENANTS})


@pytest.fixture(scope="session")
def model_name(server_url: str, auth_headers: dict[str, str]) -> str:
    return httpx.get(f"{server_url}/v1/models", headers=auth_headers).json()["data"][0]["id"]


def _postgres_admin(statement: str) -> None:
    import asyncpg

    async def run() -> None:
        connection = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=5)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(run())


def _postgres_database_url(name: str) -> str:
    """The app's URL (asyncpg driver) of a database on the admin URL's server."""
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    return f"{base}/{name}"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway Postgres database, dropped at the end of the session."""
    name = f"codeface_test_{uuid.uuid4().hex[:12]}"
    try:
        _postgres_admin(f'CREATE DATABASE "{name}"')
    except (OSError, Exception) as exc:  # connection refused, auth, timeout
        unavailable(f"Postgres is not reachable at {POSTGRES_ADMIN_URL}: {exc}")
    try:
        yield _postgres_database_url(name)
    finally:
        _postgres_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def new_postgres_database() -> Iterator[Callable[[str], str]]:
    """Makes throwaway Postgres databases (migrated), for servers of their own; dropped at the end of the session."""
    from storage import upgrade_database

    made: list[str] = []

    def make(label: str) -> str:
        name = f"codeface_test_{label}_{uuid.uuid4().hex[:8]}"
        _postgres_admin(f'CREATE DATABASE "{name}"')
        made.append(name)
        upgrade_database(_postgres_database_url(name))
        return _postgres_database_url(name)

    yield make
    for name in made:
        _postgres_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def start_replica(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """Starts extra app instances on real uvicorn servers without the engine (lifespan off): enough for every
    route that does not generate (auth, keys, /v1/models). Stopped at the end of the session."""
    from server.app import create_app
    from server.cli import resolve_model

    started: list[ThreadedServer] = []

    def start(database_url: str, redis_url: str, **overrides: object) -> str:
        port = free_port()
        settings = server_settings(database_url, redis_url, port=port, **overrides)
        server = ThreadedServer(create_app(settings, resolve_model(settings)), port, lifespan="off")
        url = f"http://127.0.0.1:{port}"
        server.start(url, probe="/healthz")
        started.append(server)
        return url

    yield start
    for server in started:
        server.stop()
