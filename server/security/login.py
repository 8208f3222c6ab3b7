"""Password guessing and its cost bounded: login attempts limited per client address and per username from that
address (server.security.budgets: shared by replicas, counted in-process too, blocks that double on repeats), and
argon2 hashes (64 MiB each) computed a few at a time. No budget is per username alone: one address guessing a name
never locks its owner out elsewhere."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from server.exceptions import RateLimited
from server.security.budgets import AbuseBudget
from server.security.ratelimit import RateLimits

HASH_WAIT_S = 2.0
BUSY_RETRY_AFTER_S = 1
TOO_MANY = "too many login attempts; retry later"


class LoginGuard:
    def __init__(self, limits: RateLimits, *, per_address: int, per_username: int, concurrent_hashes: int) -> None:
        self.per_address = AbuseBudget(limits, per_address, TOO_MANY)
        self.per_username = AbuseBudget(limits, per_username, TOO_MANY)
        self.hashes = asyncio.Semaphore(concurrent_hashes)

    async def check(self, address: str | None, username: str) -> None:
        """Raises RateLimited (429 with Retry-After) past either budget, or while a block lasts."""
        address = address or "unknown"
        await self.per_address.spend(f"login-address:{address}")
        await self.per_username.spend(f"login-username:{address}:{username}")

    @asynccontextmanager
    async def hashing(self) -> AsyncIterator[None]:
        """A place among the hashes computed at once; a login that waits too long for one is told to retry."""
        try:
            async with asyncio.timeout(HASH_WAIT_S):
                await self.hashes.acquire()
        except TimeoutError:
            raise RateLimited("too many logins in progress; retry shortly", retry_after_s=BUSY_RETRY_AFTER_S) from None
        try:
            yield
        finally:
            self.hashes.release()
