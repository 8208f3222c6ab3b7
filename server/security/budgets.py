"""Per-subject budgets against abuse (login attempts, failed credentials): counted in the shared limiter storage
and in this process's memory (so that a storage outage under fail-open never lifts them), with blocks remembered
in-process that double each time a budget is spent again (a blocked flood costs no storage call per try)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from server.exceptions import RateLimited
from server.security.ratelimit import LimitExceeded, Quota, RateLimits

LOCAL_STORAGE = "memory://"
# Subjects remembered in-process (blocks and strikes); past it, a new subject is limited by its budget alone.
MAX_REMEMBERED = 10_000
# Backoff: the first time a budget is spent, the limiter's own wait; each time again within STRIKES_KEPT_S, a
# block that doubles from BACKOFF_BASE_S up to BACKOFF_MAX_S.
BACKOFF_BASE_S = 60
BACKOFF_MAX_S = 900
STRIKES_KEPT_S = 3600.0
MAX_DOUBLINGS = 16  # far past BACKOFF_MAX_S already


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


class AbuseBudget:
    """`per_minute` tries per subject; past it, RateLimited(message) with a Retry-After that grows on repeats."""

    def __init__(self, limits: RateLimits, per_minute: int, message: str) -> None:
        self.limits = limits
        # The same budget in this process's memory: never stricter than the shared count (this replica's tries
        # are a part of it), and what still applies when the shared storage is down and fails open.
        self.local = RateLimits(LOCAL_STORAGE, fail_open=False)
        self.quota = Quota(per_minute, None, None)
        self.message = message
        self._strikes: dict[str, _Strikes] = {}

    def refuse_if_blocked(self, subject: str) -> None:
        strikes = self._strikes.get(subject)
        now = time.monotonic()
        if strikes is not None and strikes.blocked_until > now:
            raise RateLimited(self.message, retry_after_s=math.ceil(strikes.blocked_until - now))

    async def spend(self, subject: str) -> None:
        """Count one try; raises RateLimited past the budget (and while a block lasts)."""
        self.refuse_if_blocked(subject)
        try:
            await self.local.hit_request(subject, self.quota, with_window=False)
            await self.limits.hit_request(subject, self.quota, with_window=False)
        except LimitExceeded as exc:
            raise RateLimited(self.message, retry_after_s=self._strike(subject, exc.retry_after_s or 1)) from None

    def _strike(self, subject: str, limiter_wait_s: int) -> int:
        now = time.monotonic()
        previous = self._strikes.get(subject)
        count = previous.count + 1 if previous is not None and now - previous.last < STRIKES_KEPT_S else 1
        wait_s = backoff_s(count, limiter_wait_s)
        if subject not in self._strikes and len(self._strikes) >= MAX_REMEMBERED:
            self._strikes = {key: value for key, value in self._strikes.items()
                             if value.blocked_until > now or now - value.last < STRIKES_KEPT_S}
            if len(self._strikes) >= MAX_REMEMBERED:
                return wait_s
        self._strikes[subject] = _Strikes(count, now, now + wait_s)
        return wait_s
