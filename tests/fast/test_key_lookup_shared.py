"""Requests that present the same API key while it is not cached share one database lookup (a wave of them used to
take a connection each), a caller that goes away does not cancel it for the others, and an unknown key is refused
to every one of them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from server.exceptions import AuthenticationFailed
from server.security.auth import Authenticator
from server.security.credentials import api_key_hash, new_api_key, visible_prefix
from server.security.ratelimit import Quota
from server.security.tokens import TokenService
from storage import Database, upgrade_database
from storage.repository import ApiKeys, Users

QUOTA = Quota(60, 1000, 4)


class CountingDatabase(Database):
    """The SQLite database, counting the sessions opened and holding each a moment (a busy database)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.sessions = 0

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        self.sessions += 1
        await asyncio.sleep(0.05)
        async with super().session() as session:
            yield session


@pytest.fixture
def url(tmp_path: Path) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / 'keys.db'}"
    upgrade_database(url)
    return url


@pytest.fixture
async def keyed(url: str) -> AsyncIterator[tuple[CountingDatabase, str]]:
    database = CountingDatabase(url)
    key = new_api_key()
    async with database.session() as session:
        user = await Users(session).create("wave")
        await ApiKeys(session).create(user.id, key_hash=api_key_hash(key), prefix=visible_prefix(key))
        await session.commit()
    database.sessions = 0
    yield database, key
    await database.close()


def authenticator(database: Database) -> Authenticator:
    tokens = TokenService("HS256", secret="s" * 40, issuer="i", audience="a", lifetime_s=60)
    return Authenticator(database, tokens, QUOTA, cache_seconds=30.0)


async def test_a_wave_of_one_key_takes_one_lookup(keyed: tuple[CountingDatabase, str]) -> None:
    database, key = keyed
    auth = authenticator(database)
    principals = await asyncio.gather(*(auth.authenticate(key) for _ in range(20)))
    assert database.sessions == 1
    assert len({principal.key_id for principal in principals}) == 1
    await auth.authenticate(key)
    assert database.sessions == 1  # cached now


async def test_a_caller_that_leaves_does_not_cancel_the_others_lookup(keyed: tuple[CountingDatabase, str]) -> None:
    database, key = keyed
    auth = authenticator(database)
    leaving = asyncio.ensure_future(auth.authenticate(key))
    staying = asyncio.ensure_future(auth.authenticate(key))
    await asyncio.sleep(0.01)
    leaving.cancel()
    principal = await staying
    assert principal.quota == QUOTA
    assert leaving.cancelled()
    assert database.sessions == 1


async def test_an_unknown_key_is_refused_to_the_whole_wave(keyed: tuple[CountingDatabase, str]) -> None:
    database, _ = keyed
    auth = authenticator(database)
    results = await asyncio.gather(*(auth.authenticate(new_api_key()) for _ in range(3)),
                                   *(auth.authenticate("cf_same-unknown") for _ in range(5)), return_exceptions=True)
    assert all(isinstance(result, AuthenticationFailed) for result in results)
    assert database.sessions == 4  # three different keys, and one lookup for the five that share one
