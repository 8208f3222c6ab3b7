"""Where limit counters live (in memory, or Redis shared by replicas), behind the failure policy: every call has a
timeout, a storage that fails or stops answering opens a breaker for a while (so that a hung Redis costs one
timeout, not one per request), and the policy (fail open: serve unlimited; fail closed: 503) decides. Concurrent
generations are counted as leases that expire one by one, so a crashed replica's slots come back and a busy counter
can never expire as a whole and go negative."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from limits.errors import StorageError
from limits.storage import storage_from_string

from server.exceptions import Unavailable

logger = logging.getLogger(__name__)
T = TypeVar("T")

WARN_EVERY_S = 30.0
LIMITER_RETRY_AFTER_S = 5
MEMORY = "memory://"
STORAGE_ERRORS = (StorageError, ConnectionError, OSError, TimeoutError)

# One Redis round trip: drop expired leases, take one if the count allows, keep the key while leases live.
ACQUIRE_LEASE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""


class LimiterUnavailable(Unavailable):
    """The shared storage is down and the policy is to fail closed."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retry_after_s=LIMITER_RETRY_AFTER_S)


def async_storage_uri(uri: str) -> str:
    return uri if uri.startswith("async+") else "async+" + uri


def redis_url(uri: str) -> str:
    return uri.removeprefix("async+")


class SlotLeases(Protocol):
    async def acquire(self, key: str, limit: int, lease: str, ttl_s: int) -> bool: ...

    async def release(self, key: str, lease: str) -> None: ...


class MemoryLeases:
    def __init__(self) -> None:
        self._leases: dict[str, dict[str, float]] = {}

    async def acquire(self, key: str, limit: int, lease: str, ttl_s: int) -> bool:
        now = time.time()
        held = {name: until for name, until in self._leases.get(key, {}).items() if until > now}
        if len(held) >= limit:
            self._leases[key] = held
            return False
        held[lease] = now + ttl_s
        self._leases[key] = held
        return True

    async def release(self, key: str, lease: str) -> None:
        held = self._leases.get(key)
        if held is not None:
            held.pop(lease, None)
            if not held:
                del self._leases[key]


class RedisLeases:
    def __init__(self, url: str, timeout_s: float) -> None:
        import coredis

        self.client: Any = coredis.Redis.from_url(url, stream_timeout=timeout_s, connect_timeout=timeout_s)
        self.script = self.client.register_script(ACQUIRE_LEASE)

    async def acquire(self, key: str, limit: int, lease: str, ttl_s: int) -> bool:
        now = time.time()
        taken = await self.script(keys=[key], args=[now, limit, now + ttl_s, lease, ttl_s])
        return bool(taken)

    async def release(self, key: str, lease: str) -> None:
        await self.client.zrem(key, [lease])


class GuardedStorage:
    """The limits library's storage, slot leases beside it, and the failure policy over both."""

    def __init__(self, uri: str, *, fail_open: bool, timeout_s: float, retry_s: float) -> None:
        self.storage = storage_from_string(async_storage_uri(uri), wrap_exceptions=True)
        self.leases: SlotLeases = MemoryLeases() if uri.startswith(MEMORY) else RedisLeases(redis_url(uri),
                                                                                          timeout_s)
        self.fail_open = fail_open
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self._down_until = 0.0
        self._last_warning = 0.0

    async def call(self, operation: Callable[[], Awaitable[T]]) -> T | None:
        """Run one storage operation under the policy: None when the storage is down and the policy fails open."""
        if time.monotonic() < self._down_until:
            self._unavailable("recently unreachable")
            return None
        try:
            async with asyncio.timeout(self.timeout_s):
                return await operation()
        except STORAGE_ERRORS as exc:
            self._down_until = time.monotonic() + self.retry_s
            self._unavailable(type(exc).__name__)
            return None

    def _unavailable(self, why: str) -> None:
        """Fail closed (raise), or warn now and then and let the caller go on unlimited."""
        if not self.fail_open:
            raise LimiterUnavailable(f"rate-limit storage unavailable ({why})")
        now = time.monotonic()
        if now - self._last_warning > WARN_EVERY_S:
            self._last_warning = now
            logger.warning("rate-limit storage unavailable (%s): failing open, requests are not limited", why)
