"""Where limit counters live (in memory, or Redis shared by replicas), behind the failure policy: every call has a
timeout, a storage that fails or stops answering opens a breaker for a while (so that a hung Redis costs one
timeout, not one per request), and the policy (fail open: serve unlimited; fail closed: 503) decides. A generation's
tokens and stream slots are held and given back through server.security.reservations. What is given back (a slot,
unused tokens) never fails its caller: a give-back the storage did not take is retried in the background until it
lands or stops mattering."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from coredis.exceptions import RedisError
from limits.errors import StorageError
from limits.storage import storage_from_string

from server.exceptions import Unavailable
from server.security.reservations import MemoryReservations, RedisReservations, Reservations
from server.telemetry.metrics import StorageFailure, rate_limit_storage_failures

logger = logging.getLogger(__name__)
T = TypeVar("T")

WARN_EVERY_S = 30.0
LIMITER_RETRY_AFTER_S = 5
MEMORY = "memory://"
# coredis raises its own errors (not builtins) for a refused, reset or timed-out connection: the slot leases call it
# directly, so they are listed beside the limits library's wrapped StorageError.
STORAGE_ERRORS = (StorageError, RedisError, ConnectionError, OSError, TimeoutError)
GIVE_BACK_FIRST_RETRY_S = 0.5
# A reply that reached the socket while this process's event loop was busy or starved is read a few loop turns after
# the timer fired: only a reply still missing then means the storage is slow (on a loaded 2-core machine, a timer-only
# timeout failed calls that Redis had answered in a millisecond, and the breaker then left streams unlimited).
LATE_REPLY_TURNS = 3
# Failures in a row that open the breaker: one slow call is not an outage.
BREAKER_FAILURES = 2
# Opening the connection at start-up may take longer than one call's timeout (a busy machine, a TLS handshake).
WARM_UP_TIMEOUT_S = 10.0
# Give-backs waiting for the storage, at most: past that the oldest are dropped (their expiry still bounds them).
MAX_PENDING_GIVE_BACKS = 100_000

async def bounded(operation: Callable[[], Awaitable[T]], timeout_s: float) -> T:
    """`operation`'s result, or TimeoutError if the storage has not answered within `timeout_s` (a reply that
    arrived in time but waits for this loop is still taken: see LATE_REPLY_TURNS)."""
    task = asyncio.ensure_future(operation())
    try:
        await asyncio.wait({task}, timeout=timeout_s)
        for _ in range(LATE_REPLY_TURNS):
            if task.done():
                break
            await asyncio.sleep(0)
        if not task.done():
            raise TimeoutError(f"no answer in {timeout_s} s")
        return task.result()
    finally:
        if not task.done():
            task.cancel()
            task.add_done_callback(_retrieve)


def _retrieve(task: asyncio.Future[Any]) -> None:
    with contextlib.suppress(asyncio.CancelledError, Exception):
        task.exception()


class LimiterUnavailable(Unavailable):
    """The shared storage is down and the policy is to fail closed."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retry_after_s=LIMITER_RETRY_AFTER_S)


def async_storage_uri(uri: str) -> str:
    return uri if uri.startswith("async+") else "async+" + uri


def redis_url(uri: str) -> str:
    return uri.removeprefix("async+")


class GuardedStorage:
    """The limits library's storage, the reservations beside it, and the failure policy over both."""

    def __init__(self, uri: str, *, fail_open: bool, timeout_s: float, retry_s: float) -> None:
        self.storage = storage_from_string(async_storage_uri(uri), wrap_exceptions=True)
        # Memory cannot fail or stop answering: no timeout and no breaker. (A timeout there only measured the wait
        # for the storage's per-key lock: under a flood on one key, it failed the in-process login budget.)
        self.remote = not uri.startswith(MEMORY)
        self.reservations: Reservations = (
            RedisReservations(redis_url(uri), timeout_s, self.storage.bridge.prefixed_key) if self.remote
            else MemoryReservations(self.storage))
        self.fail_open = fail_open
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self._down_until = 0.0
        self._last_warning = 0.0
        self._failures = 0
        self.give_backs = GiveBacks(timeout_s, retry_s, on_landed=self._answered)

    async def call(self, operation: Callable[[], Awaitable[T]],
                   undo: Callable[[], Awaitable[object]] | None = None, undo_until: float = 0.0) -> T | None:
        """Run one storage operation under the policy: None when the storage is down and the policy fails open.
        `undo` is given back (until `undo_until`, wall-clock) when the operation failed: it may have landed."""
        if not self.remote:
            return await operation()
        if time.monotonic() < self._down_until:
            rate_limit_storage_failures.labels(StorageFailure.BREAKER_OPEN).inc()
            self._unavailable("recently unreachable")
            return None
        try:
            result = await bounded(operation, self.timeout_s)
        except STORAGE_ERRORS as exc:
            rate_limit_storage_failures.labels(
                StorageFailure.TIMEOUT if isinstance(exc, TimeoutError) else StorageFailure.ERROR).inc()
            self._failures += 1
            if self._failures >= BREAKER_FAILURES:
                self._down_until = time.monotonic() + self.retry_s
            if undo is not None:
                self.give_backs.add(undo, undo_until)
            self._unavailable(type(exc).__name__)
            return None
        self._failures = 0
        return result

    def _answered(self) -> None:
        """The storage took a call: close the breaker now rather than when its wait runs out (limits would go on
        failing open for up to `retry_s` after Redis came back)."""
        self._failures = 0
        self._down_until = 0.0

    async def warm_up(self) -> None:
        """Open the connections before the first request: otherwise the first request pays for them inside its
        call timeout, and on a busy machine that trips the breaker (its stream would then run unlimited)."""
        if isinstance(self.reservations, RedisReservations):
            try:
                async with asyncio.timeout(WARM_UP_TIMEOUT_S):
                    await self.storage.check()
                    await self.reservations.warm_up()
            except STORAGE_ERRORS as exc:
                logger.warning("rate-limit storage not reachable at start-up (%s); the failure policy applies",
                               type(exc).__name__)

    async def give_back(self, operation: Callable[[], Awaitable[object]], until: float) -> None:
        """Run a give-back now, or, when the storage is down or fails it, retry it in the background until it lands
        or `until` (wall-clock) passes. Never raises: the end of a generation must not depend on the storage."""
        if not self.remote:
            await operation()
            return
        if time.monotonic() >= self._down_until:
            try:
                await bounded(operation, self.timeout_s)
                return
            except STORAGE_ERRORS as exc:
                self._down_until = time.monotonic() + self.retry_s
                logger.warning("rate-limit storage unavailable (%s): a give-back will be retried",
                               type(exc).__name__)
            except Exception:
                logger.exception("a rate-limit give-back failed and is dropped (its expiry will give it back)")
                return
        rate_limit_storage_failures.labels(StorageFailure.GIVE_BACK).inc()
        self.give_backs.add(operation, until)

    def _unavailable(self, why: str) -> None:
        """Fail closed (raise), or warn now and then and let the caller go on unlimited."""
        if not self.fail_open:
            raise LimiterUnavailable(f"rate-limit storage unavailable ({why})")
        now = time.monotonic()
        if now - self._last_warning > WARN_EVERY_S:
            self._last_warning = now
            logger.warning("rate-limit storage unavailable (%s): failing open, requests are not limited", why)


class GiveBacks:
    """Give-backs the storage did not take, retried with backoff from a task of their own (a slot released while
    Redis restarts would otherwise stay held until its lease expires, an hour later)."""

    def __init__(self, timeout_s: float, max_delay_s: float, on_landed: Callable[[], None]) -> None:
        self.timeout_s = timeout_s
        self.max_delay_s = max_delay_s
        self.on_landed = on_landed
        self.pending: list[tuple[Callable[[], Awaitable[object]], float]] = []
        self._task: asyncio.Task[None] | None = None

    def add(self, operation: Callable[[], Awaitable[object]], until: float) -> None:
        if time.time() >= until:
            return
        if len(self.pending) >= MAX_PENDING_GIVE_BACKS:
            del self.pending[0]
            logger.warning("too many rate-limit give-backs waiting for the storage: the oldest is dropped")
        self.pending.append((operation, until))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._retry())

    async def _retry(self) -> None:
        delay = GIVE_BACK_FIRST_RETRY_S
        while self.pending:
            await asyncio.sleep(delay)
            waiting, self.pending = self.pending, []
            for index, (operation, until) in enumerate(waiting):
                if time.time() >= until:
                    continue
                try:
                    await bounded(operation, self.timeout_s)
                    self.on_landed()
                except STORAGE_ERRORS:
                    self.pending = waiting[index:] + self.pending  # still down: keep the rest, in order
                    break
                except Exception:
                    logger.exception("a rate-limit give-back failed and is dropped (its expiry will give it back)")
            else:
                delay = GIVE_BACK_FIRST_RETRY_S
                continue
            delay = min(delay * 2, self.max_delay_s)
        logger.info("rate-limit give-backs caught up")
