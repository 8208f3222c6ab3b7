"""Per-key rate limits on the `limits` library: requests/minute (moving window), tokens/minute (reserve max_tokens
at admission, settle to the real count at the end) and concurrent generations. In-memory, or Redis to share one
budget between replicas; what happens when Redis is unreachable is a configured policy."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

from limits import RateLimitItemPerMinute
from limits.aio.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter
from limits.errors import StorageError
from limits.storage import storage_from_string

from server.exceptions import RateLimited, Unavailable

logger = logging.getLogger(__name__)
T = TypeVar("T")

# A stream slot is normally released when its generation ends; the expiry only bounds a leak from a crashed replica.
SLOT_EXPIRY_S = 24 * 3600
WARN_EVERY_S = 30.0
LIMITER_RETRY_AFTER_S = 5
MINUTE_S = 60


@dataclass(frozen=True, slots=True)
class Quota:
    """None means unlimited."""

    requests_per_minute: int | None
    tokens_per_minute: int | None
    max_concurrent_streams: int | None


class Limit(StrEnum):
    REQUESTS_PER_MINUTE = "requests_per_minute"
    TOKENS_PER_MINUTE = "tokens_per_minute"
    MAX_CONCURRENT_STREAMS = "max_concurrent_streams"


@dataclass(frozen=True, slots=True)
class Window:
    """What the RateLimit-* response headers report: the requests-per-minute window."""

    limit: int
    remaining: int
    reset_s: int

    def headers(self) -> dict[str, str]:
        return {"RateLimit-Limit": str(self.limit), "RateLimit-Remaining": str(self.remaining),
                "RateLimit-Reset": str(self.reset_s)}


class LimitExceeded(RateLimited):
    """`limit` says which budget is spent; the response carries the window's headers when there is one."""

    def __init__(self, limit: Limit, message: str, retry_after_s: int, window: Window | None = None) -> None:
        super().__init__(message, retry_after_s=max(1, retry_after_s))
        self.limit = limit
        self.window_headers = window.headers() if window is not None else None


class LimiterUnavailable(Unavailable):
    """The shared storage is down and the policy is to fail closed."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retry_after_s=LIMITER_RETRY_AFTER_S)


def async_storage_uri(uri: str) -> str:
    return uri if uri.startswith("async+") else "async+" + uri


class Reservation:
    """Tokens and a stream slot held for one generation; `settle` gives back what was not used (once)."""

    def __init__(self, limits: RateLimits, subject: str, item: RateLimitItemPerMinute | None, reserved: int,
                 window_reset_at: float, slot_key: str | None) -> None:
        self._limits = limits
        self._subject = subject
        self._item = item
        self._reserved = reserved
        self._window_reset_at = window_reset_at
        self._slot_key = slot_key
        self._settled = False

    async def settle(self, used_tokens: int) -> None:
        if self._settled:
            return
        self._settled = True
        refund = self._reserved - used_tokens
        # Refund only into the window that was charged: after it reset, the charge is gone anyway.
        if self._item is not None and refund > 0 and time.time() < self._window_reset_at:
            await self._limits.guarded(self._limits.storage.incr(
                self._item.key_for(self._subject), self._item.get_expiry(), amount=-refund))
        if self._slot_key is not None:
            await self._limits.guarded(self._limits.storage.incr(self._slot_key, SLOT_EXPIRY_S, amount=-1))


class RateLimits:
    def __init__(self, storage_uri: str, *, fail_open: bool, key_prefix: str = "codeface") -> None:
        self.storage = storage_from_string(async_storage_uri(storage_uri), wrap_exceptions=True)
        self.requests = MovingWindowRateLimiter(self.storage)
        self.tokens = FixedWindowRateLimiter(self.storage)
        self.fail_open = fail_open
        self.key_prefix = key_prefix
        self._last_warning = 0.0

    async def guarded(self, operation: Awaitable[T]) -> T | None:
        """Run a storage operation under the failure policy: None when the storage is down and we fail open."""
        try:
            return await operation
        except (StorageError, ConnectionError, OSError) as exc:
            if not self.fail_open:
                raise LimiterUnavailable(f"rate-limit storage unavailable: {type(exc).__name__}") from None
            now = time.monotonic()
            if now - self._last_warning > WARN_EVERY_S:
                self._last_warning = now
                logger.warning("rate-limit storage unavailable (%s): failing open, requests are not limited",
                               type(exc).__name__)
            return None

    async def hit_request(self, subject: str, quota: Quota) -> Window | None:
        """Count one request against the per-minute budget; raises LimitExceeded when it is spent."""
        if quota.requests_per_minute is None:
            return None
        item = RateLimitItemPerMinute(quota.requests_per_minute, namespace=f"{self.key_prefix}-rpm")
        allowed = await self.guarded(self.requests.hit(item, subject))
        if allowed is None:
            return None
        stats = await self.guarded(self.requests.get_window_stats(item, subject))
        reset_s = max(0, math.ceil(stats.reset_time - time.time())) if stats is not None else MINUTE_S
        window = Window(quota.requests_per_minute, stats.remaining if stats is not None else 0, reset_s)
        if not allowed:
            raise LimitExceeded(Limit.REQUESTS_PER_MINUTE,
                                f"rate limit exceeded: {quota.requests_per_minute} requests per minute",
                                reset_s, window)
        return window

    async def reserve(self, subject: str, quota: Quota, tokens: int) -> Reservation:
        """Hold `tokens` of the per-minute token budget and one concurrent-stream slot, or raise LimitExceeded."""
        item = None
        reset_at = 0.0
        if quota.tokens_per_minute is not None:
            if tokens > quota.tokens_per_minute:
                raise LimitExceeded(Limit.TOKENS_PER_MINUTE,
                                    f"this request may use {tokens} tokens, more than the key's budget of "
                                    f"{quota.tokens_per_minute} tokens per minute; lower max_tokens", MINUTE_S)
            item = RateLimitItemPerMinute(quota.tokens_per_minute, namespace=f"{self.key_prefix}-tpm")
            allowed = await self.guarded(self.tokens.hit(item, subject, cost=tokens))
            stats = await self.guarded(self.tokens.get_window_stats(item, subject))
            reset_at = stats.reset_time if stats is not None else time.time() + MINUTE_S
            if allowed is False:
                # A fixed window counts the refused hit too: take it back.
                await self.guarded(self.storage.incr(item.key_for(subject), item.get_expiry(), amount=-tokens))
                raise LimitExceeded(Limit.TOKENS_PER_MINUTE,
                                    f"rate limit exceeded: {quota.tokens_per_minute} tokens per minute",
                                    math.ceil(reset_at - time.time()))
            if allowed is None:
                item = None
        slot_key = None
        if quota.max_concurrent_streams is not None:
            slot_key = f"{self.key_prefix}-streams/{subject}"
            count = await self.guarded(self.storage.incr(slot_key, SLOT_EXPIRY_S, amount=1))
            if count is None:
                slot_key = None
            elif count > quota.max_concurrent_streams:
                await self.guarded(self.storage.incr(slot_key, SLOT_EXPIRY_S, amount=-1))
                if item is not None:
                    await self.guarded(self.storage.incr(item.key_for(subject), item.get_expiry(), amount=-tokens))
                raise LimitExceeded(Limit.MAX_CONCURRENT_STREAMS,
                                    f"too many concurrent generations: at most {quota.max_concurrent_streams}", 1)
        return Reservation(self, subject, item, tokens if item is not None else 0, reset_at, slot_key)
