"""Password guessing and its cost bounded: login attempts limited per client address and per username from that
address (shared by replicas through the limiter storage, and counted in-process as well, so that a limiter storage
that is down never lifts them), a block that doubles each time a budget is spent again, and argon2 hashes (64 MiB
each) computed a few at a time. No budget is per username alone: one address guessing a name never locks its owner
out elsewhere."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from server.exceptions import RateLimited
from server.security.ratelimit import LimitExceeded, Quota, RateLimits

HASH_WAIT_S = 2.0
BUSY_RETRY_AFTER_S = 1
LOCAL_STORAGE = "memory://"
# Subjects remembered in-process (blocks and strikes): past its budget, a flood costs no storage call per try.
MAX_REMEMBERED = 10_000
# Backoff: the first time a budget is spent, the limiter's own wait; each time again within STRIKES_KEPT_S, a
# block that doubles from BACKOFF_BASE_S up to BACKOFF_MAX_S.
BACKOFF_BASE_S = 60
BACKOFF_MAX_S = 900
STRIKES_KEPT_S = 3600.0
MAX_DOUBLINGS = 16  # far past BACKOFF_MAX_S already
TOO_MANY = "too many login attempts; retry later"


@dataclass(slots=True)
class _Strikes:
    count: int
    last: float
    blocked_until: float


def backoff_s(strikes: int, limiter_wait_s: int) -> int:
    """How long a subject is blocked the `strikes`-th time in a row that it spends its budget."""
    if strikes <= 1:
        return max(1, limiter_wait_s)
    return min(BACKOFF_MAX_S, max(limiter_wait_s, BACKOFF_BASE_S << min(strikes - 2, MAX_DOUBLINGS)))


class LoginGuard:
    def __init__(self, limits: RateLimits, *, per_address: int, per_username: int, concurrent_hashes: int) -> None:
        self.limits = limits
        # The same budgets in this process's memory: never stricter than the shared count (this replica's
        # attempts are a part of it), and what still applies when the shared storage is down and fails open.
        self.local = RateLimits(LOCAL_STORAGE, fail_open=False)
        self.per_address = Quota(per_address, None, None)
        self.per_username = Quota(per_username, None, None)
        self.hashes = asyncio.Semaphore(concurrent_hashes)
        self._strikes: dict[str, _Strikes] = {}

    async def check(self, address: str | None, username: str) -> None:
        """Raises RateLimited (429 with Retry-After) past either budget, or while a block lasts."""
        address = address or "unknown"
        for subject, quota in ((f"login-address:{address}", self.per_address),
                               (f"login-username:{address}:{username}", self.per_username)):
            await self._hit(subject, quota)

    async def _hit(self, subject: str, quota: Quota) -> None:
        now = time.monotonic()
        strikes = self._strikes.get(subject)
        if strikes is not None and strikes.blocked_until > now:
            raise RateLimited(TOO_MANY, retry_after_s=math.ceil(strikes.blocked_until - now))
        try:
            await self.local.hit_request(subject, quota, with_window=False)
            await self.limits.hit_request(subject, quota, with_window=False)
        except LimitExceeded as exc:
            wait_s = self._strike(subject, now, exc.retry_after_s or 1)
            raise RateLimited(TOO_MANY, retry_after_s=wait_s) from None

    def _strike(self, subject: str, now: float, limiter_wait_s: int) -> int:
        previous = self._strikes.get(subject)
        count = previous.count + 1 if previous is not None and now - previous.last < STRIKES_KEPT_S else 1
        wait_s = backoff_s(count, limiter_wait_s)
        if subject not in self._strikes and len(self._strikes) >= MAX_REMEMBERED:
            self._strikes = {key: value for key, value in self._strikes.items()
                             if value.blocked_until > now or now - value.last < STRIKES_KEPT_S}
            if len(self._strikes) >= MAX_REMEMBERED:
                return wait_s  # full of live entries: this one is limited by the budget alone
        self._strikes[subject] = _Strikes(count, now, now + wait_s)
        return wait_s

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
