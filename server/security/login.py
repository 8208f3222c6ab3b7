"""Password guessing and its cost bounded: login attempts limited per client address and per username (shared by
replicas through the limiter storage), and argon2 hashes (64 MiB each) computed a few at a time."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from server.exceptions import RateLimited
from server.security.ratelimit import LimitExceeded, Quota, RateLimits

HASH_WAIT_S = 2.0
BUSY_RETRY_AFTER_S = 1
# Blocked addresses remembered in-process: past its budget, a flood costs no storage call per try.
MAX_REMEMBERED_BLOCKS = 10_000


class LoginGuard:
    def __init__(self, limits: RateLimits, *, per_address: int, per_username: int, concurrent_hashes: int) -> None:
        self.limits = limits
        self.per_address = Quota(per_address, None, None)
        self.per_username = Quota(per_username, None, None)
        self.hashes = asyncio.Semaphore(concurrent_hashes)
        self._blocked_until: dict[str, float] = {}

    async def check(self, address: str | None, username: str) -> None:
        """Raises LimitExceeded (429 with Retry-After) past either budget."""
        subject = f"login-address:{address or 'unknown'}"
        now = time.monotonic()
        until = self._blocked_until.get(subject)
        if until is not None and until > now:
            raise RateLimited("too many login attempts from this address; retry later",
                              retry_after_s=math.ceil(until - now))
        try:
            await self.limits.hit_request(subject, self.per_address, with_window=False)
        except LimitExceeded as exc:
            self._remember_block(subject, now + (exc.retry_after_s or 1))
            raise
        await self.limits.hit_request(f"login-username:{username}", self.per_username, with_window=False)

    def _remember_block(self, subject: str, until: float) -> None:
        if len(self._blocked_until) >= MAX_REMEMBERED_BLOCKS:
            now = time.monotonic()
            self._blocked_until = {key: value for key, value in self._blocked_until.items() if value > now}
            if len(self._blocked_until) >= MAX_REMEMBERED_BLOCKS:
                return
        self._blocked_until[subject] = until

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
