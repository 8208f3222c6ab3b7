"""Unauthenticated floods against the real app on Postgres and Redis (the engine faked: none of this reaches it):
fake API keys cost a bounded number of database lookups (failed credentials limited per address, unknown keys
remembered briefly), a flood of open readiness probes costs one database ping a second, and a connection pool held
full answers 503 with Retry-After, not 500."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import event
from starlette.applications import Starlette

from conftest import server_settings, user_with_key
from fast.fake_engine import FakeEngine

FAILED_PER_MINUTE = 20
FLOOD = 200
CONVERSATIONS = "/api/v1/conversations"


def random_address() -> str:
    """A fresh client address per run: the counters live in the shared Redis for a minute."""
    return f"10.{secrets.randbelow(256)}.{secrets.randbelow(256)}.{secrets.randbelow(254) + 1}"


def fake_key() -> str:
    return "cf_" + secrets.token_urlsafe(32)


@pytest.fixture
def make_app(server_database_url: str, redis_url: str) -> Callable[..., Starlette]:
    from server.app import create_app

    def make(**overrides: object) -> Starlette:
        settings = server_settings(server_database_url, redis_url,
                                   failed_auth_per_minute_per_address=FAILED_PER_MINUTE, **overrides)
        return create_app(settings, "/fake", engine=FakeEngine())

    return make


def client(app: Starlette, address: str) -> httpx.AsyncClient:
    # As uvicorn: the response the app sent, even when the exception is raised on afterwards (to be logged).
    transport = httpx.ASGITransport(app=app, client=(address, 40000), raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1", timeout=60)


@pytest.fixture
def selects(make_app: Callable[..., Starlette]) -> Iterator[tuple[Starlette, list[str]]]:
    """The app, and the SELECTs its database ran."""
    app = make_app()
    seen: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            seen.append(statement)

    engine = app.state.services.database.engine.sync_engine
    event.listen(engine, "before_cursor_execute", count)
    yield app, seen
    event.remove(engine, "before_cursor_execute", count)


async def test_a_flood_of_fake_keys_from_one_address_costs_bounded_lookups(
        selects: tuple[Starlette, list[str]]) -> None:
    app, seen = selects
    async with client(app, random_address()) as http:
        statuses = [(await http.get(CONVERSATIONS, headers={"Authorization": f"Bearer {fake_key()}"})).status_code
                    for _ in range(FLOOD)]
        refused = await http.get(CONVERSATIONS, headers={"Authorization": f"Bearer {fake_key()}"})
    assert statuses[:FAILED_PER_MINUTE] == [401] * FAILED_PER_MINUTE, statuses
    assert set(statuses[FAILED_PER_MINUTE:]) == {429}, statuses
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert len(seen) <= FAILED_PER_MINUTE + 1, len(seen)  # the try that crossed the budget was looked up


async def test_one_fake_key_from_many_addresses_is_looked_up_once(selects: tuple[Starlette, list[str]]) -> None:
    app, seen = selects
    key = fake_key()
    for _ in range(50):
        async with client(app, random_address()) as http:
            assert (await http.get(CONVERSATIONS, headers={"Authorization": f"Bearer {key}"})).status_code == 401
    assert len(seen) == 1, len(seen)


async def test_a_readyz_flood_costs_bounded_database_pings(selects: tuple[Starlette, list[str]]) -> None:
    """/readyz is open: each probe used to run its own SELECT 1, so a flood held the pool and every keyed request
    waited for it. Concurrent probes share one ping, reused for a second."""
    app, seen = selects
    async with client(app, random_address()) as http:
        began = asyncio.get_running_loop().time()
        answers = await asyncio.gather(*(http.get("/readyz") for _ in range(FLOOD)))
        elapsed_s = asyncio.get_running_loop().time() - began
    assert {response.status_code for response in answers} == {200}, {r.status_code for r in answers}
    pings = sum(statement.strip().upper() == "SELECT 1" for statement in seen)
    # One ping per started second of the flood (its answer is reused for 1 s), whatever the number of probes.
    assert 1 <= pings <= int(elapsed_s) + 1, (pings, elapsed_s)
    print(f"readyz flood: {FLOOD} concurrent probes in {elapsed_s:.2f} s cost {pings} database ping(s)")


@pytest.fixture
def key_and_password(server_database_url: str, redis_url: str) -> tuple[str, str, str]:
    username = f"pool-{uuid.uuid4().hex[:8]}"
    key = user_with_key(server_settings(server_database_url, redis_url), username)
    return key, username, f"{username}-password-1"


@pytest.fixture
async def pool_app(make_app: Callable[..., Starlette]) -> AsyncIterator[Starlette]:
    app = make_app(database_pool_size=1)  # one connection and one overflow
    yield app
    await app.state.services.database.close()


async def test_a_full_connection_pool_answers_503_with_retry_after(
        pool_app: Starlette, key_and_password: tuple[str, str, str]) -> None:
    key, username, password = key_and_password
    async with client(pool_app, random_address()) as http:
        token = (await http.post("/api/v1/auth/token",
                                 data={"username": username, "password": password})).json()["access_token"]
        database = pool_app.state.services.database
        async with database.engine.connect() as first, database.engine.connect() as second:
            for connection in (first, second):
                await connection.exec_driver_sql("SELECT 1")  # checked out, and held
            # The key is not cached yet: the access middleware looks it up. The token needs no lookup: the route's
            # own query waits for a connection.
            by_key, by_token = await asyncio.gather(
                http.get(CONVERSATIONS, headers={"Authorization": f"Bearer {key}"}),
                http.get(CONVERSATIONS, headers={"Authorization": f"Bearer {token}"}))
        for response in (by_key, by_token):
            assert response.status_code == 503, response.text
            assert int(response.headers["Retry-After"]) >= 1
            assert response.json()["error"]["type"] == "service_unavailable"
        # The pool free again, both are served.
        assert (await http.get(CONVERSATIONS, headers={"Authorization": f"Bearer {key}"})).status_code == 200
        assert (await http.get(CONVERSATIONS, headers={"Authorization": f"Bearer {token}"})).status_code == 200
