"""The fast tier (`make test-fast`). The rule: every test that needs no real engine (no model), no Postgres and no
Redis lives in tests/fast, and every test outside it needs at least one of them. HTTP tests here drive the real app,
settings, database (SQLite in a temp folder) and limits (memory) through httpx's ASGI transport, with FakeEngine (a
named test double) in place of vLLM. A test run against both a real and a local part (Redis and memory, Postgres and
SQLite) takes its body from tests/support and runs here on the local part."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from fast.fake_engine import FakeEngine

SECRET = "fast-tier-secret-key-0123456789-abcdefghijk"


@pytest.fixture(scope="session")
def migrated_database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An SQLite file migrated once by Alembic; each app gets a copy of it."""
    from storage import upgrade_database

    path = tmp_path_factory.mktemp("fast") / "template.db"
    upgrade_database(f"sqlite+aiosqlite:///{path}")
    return path


def make_app(template: Path, tmp_path: Path, engine: FakeEngine, **overrides: object) -> Starlette:
    from server.app import create_app
    from server.settings import load_settings

    database = tmp_path / f"fast-{uuid.uuid4().hex[:8]}.db"
    shutil.copyfile(template, database)
    url = f"sqlite+aiosqlite:///{database}"
    values: dict[str, object] = {"database_url": url, "auth_enabled": False, "rate_limit_storage": "memory://",
                                 "secret_key": SECRET, "max_body_bytes": 65536, "conversation_grace_s": 1.0,
                                 "sse_heartbeat_s": 0.5, "sse_idle_heartbeat_s": 0.5, "access_log": False,
                                 # the base URL the clients below use: a configured host (loopback is allowed anyway)
                                 "allowed_hosts": ["fast.test"], **overrides}
    return create_app(load_settings(None, **values), "/fake", engine=engine)


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def client_for(migrated_database: Path, tmp_path: Path) -> Callable[..., httpx.AsyncClient]:
    def make(engine: FakeEngine, **overrides: object) -> httpx.AsyncClient:
        app = make_app(migrated_database, tmp_path, engine, **overrides)
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://fast.test", timeout=10)

    return make


@pytest.fixture
async def client(client_for: Callable[..., httpx.AsyncClient], engine: FakeEngine) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(engine) as http:
        yield http


# A key without limits of its own (0: none), for tests that set the limit they test elsewhere.
UNLIMITED = {"requests_per_minute": 0, "tokens_per_minute": 0, "max_concurrent_streams": 0}


async def database_with_users(template: Path, tmp_path: Path,
                              limits: dict[str, dict[str, int]]) -> tuple[str, dict[str, str]]:
    """A copy of the migrated database with a user and an API key per entry of `limits` (the key's limits), made
    with the admin CLI's functions."""
    from server import admin
    from server.settings import load_settings

    path = tmp_path / f"auth-{uuid.uuid4().hex[:8]}.db"
    shutil.copyfile(template, path)
    url = f"sqlite+aiosqlite:///{path}"
    settings = load_settings(None, database_url=url, secret_key=SECRET)
    keys = {}
    for name, key_limits in limits.items():
        await admin.create_user(settings, name, f"{name}-password-1", False)
        keys[name] = await admin.create_key(settings, name, "tests", None, dict(key_limits))
    return url, keys


@pytest.fixture
def auth_client(migrated_database: Path, tmp_path: Path) -> Callable[..., Any]:
    """An app with auth on; returns a client and each user's Authorization header."""
    async def make(engine: FakeEngine, limits: dict[str, dict[str, int]], **overrides: object) -> tuple[Any, dict]:
        url, keys = await database_with_users(migrated_database, tmp_path, limits)
        app = make_app(migrated_database, tmp_path, engine, auth_enabled=True, database_url=url, **overrides)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://fast.test", timeout=10)
        return client, {name: {"Authorization": f"Bearer {key}"} for name, key in keys.items()}

    return make


# The LoRA adapters of the apps `lora_app` makes (FakeEngine "loads" any folder: its adapters say their name).
PROFILE = {"alpha": "/adapters/alpha", "beta": "/adapters/beta"}


async def started(app: Starlette) -> httpx.AsyncClient:
    """A client of `app` once its adapters are loaded (the ASGI transport runs no lifespan: started here)."""
    await app.state.services.adapters.start()
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://fast.test", timeout=10)


@pytest.fixture
def lora_app(migrated_database: Path, tmp_path: Path) -> Callable[..., Starlette]:
    def make(engine: FakeEngine, **overrides: object) -> Starlette:
        return make_app(migrated_database, tmp_path, engine, enable_lora=True, lora_adapters=PROFILE, **overrides)

    return make


async def users_with_keys(template: Path, tmp_path: Path, spec: dict[str, tuple[bool, list[str] | None,
                                                                               list[str] | None]]) -> tuple[str, dict]:
    """A database with, per name, a user (admin?, its allowed models) and one key (its allowed models)."""
    from server import admin
    from server.settings import load_settings

    path = tmp_path / f"access-{uuid.uuid4().hex[:8]}.db"
    shutil.copyfile(template, path)
    url = f"sqlite+aiosqlite:///{path}"
    settings = load_settings(None, database_url=url, secret_key=SECRET)
    headers = {}
    for name, (is_admin, user_models, key_models) in spec.items():
        await admin.create_user(settings, name, f"{name}-password-1", is_admin, user_models)
        key = await admin.create_key(settings, name, "tests", None, {}, key_models)
        headers[name] = {"Authorization": f"Bearer {key}"}
    return url, headers
