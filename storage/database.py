"""The async database handle: one engine and session factory per process, for Postgres or SQLite."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

CONNECT_TIMEOUT_S = 5
COMMAND_TIMEOUT_S = 10
POOL_TIMEOUT_S = 10
# How long a readiness answer is reused: a flood of open probes then costs one connection a second, never the pool.
SHARED_PING_MAX_AGE_S = 1.0


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def ensure_sqlite_parent(url: str) -> None:
    """Create the folder of a file-backed SQLite database, which SQLite will not do itself."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def _enable_sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Foreign keys are off by default in SQLite (cascading deletes need them); WAL lets readers run during writes.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def create_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    if is_sqlite(url):
        ensure_sqlite_parent(url)
        engine = create_async_engine(url)
        event.listen(engine.sync_engine, "connect", _enable_sqlite_pragmas)
        return engine
    # Timeouts so that a database that stops answering fails a statement instead of hanging it: callers retry.
    return create_async_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True,
                               pool_timeout=POOL_TIMEOUT_S,
                               connect_args={"timeout": CONNECT_TIMEOUT_S, "command_timeout": COMMAND_TIMEOUT_S})


class Database:
    """Owns the connection pool; hands out sessions, one per unit of work."""

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = url
        self.engine = create_engine(url, pool_size=pool_size)
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._shared_ping: asyncio.Future[bool] | None = None
        self._shared_ping_at = -SHARED_PING_MAX_AGE_S

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        async with self._sessions() as session:
            yield session

    async def ping(self) -> bool:
        try:
            async with self.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        except Exception:
            return False
        return True

    async def ping_shared(self) -> bool:
        """ping() for open probes (/readyz): callers at the same time share one ping, and its answer is reused for
        SHARED_PING_MAX_AGE_S."""
        fresh = time.monotonic() - self._shared_ping_at < SHARED_PING_MAX_AGE_S
        if self._shared_ping is None or (self._shared_ping.done() and not fresh):
            self._shared_ping_at = time.monotonic()
            self._shared_ping = asyncio.ensure_future(self.ping())
        # Shielded: a probe whose client leaves does not cancel the ping the others wait for.
        return await asyncio.shield(self._shared_ping)

    async def close(self) -> None:
        await self.engine.dispose()
