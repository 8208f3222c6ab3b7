"""Rate limits on the `limits` library: requests/minute (moving window), tokens/minute (reserve prompt + max_tokens at
admission, settle to the real count at the end) and concurrent generations (leases). Each applies per key and, in
aggregate, per user, so that minting keys does not multiply a user's budget. In memory, or Redis to share budgets
between replicas; what happens when Redis fails or hangs is a configured policy (server.security.limiter_storage)."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from dataclasses import dataclass
from enum import StrEnum
from functools import partial

import anyio
from limits import RateLimitItemPerMinute
from limits.aio.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter

from server.exceptions import RateLimited
from server.security.limiter_storage import GuardedStorage, LimiterUnavailable
from server.security.reservations import Ask, HeldSlots, Kind, Refused, held_slots

# A stream slot is released when its generation ends; the lease's expiry only bounds a leak from a crashed replica.
SLOT_LEASE_S = 3600
MINUTE_S = 60
DEFAULT_TIMEOUT_S = 0.25
DEFAULT_RETRY_S = 5.0
SEQUENCES_RETRY_AFTER_S = 1

__all__ = ["Budget", "Limit", "LimitExceeded", "LimiterUnavailable", "Quota", "RateLimits", "Reservation", "Sequences",
           "Window", "too_many_sequences"]


class Limit(StrEnum):
    REQUESTS_PER_MINUTE = "requests_per_minute"
    TOKENS_PER_MINUTE = "tokens_per_minute"
    MAX_CONCURRENT_STREAMS = "max_concurrent_streams"
    # A user's share of this server's admission (server.generation.generator.Admission), not a stored budget.
    MAX_INFLIGHT_SEQUENCES = "max_inflight_sequences_per_user"


@dataclass(frozen=True, slots=True)
class Quota:
    """None means unlimited."""

    requests_per_minute: int | None
    tokens_per_minute: int | None
    max_concurrent_streams: int | None


@dataclass(frozen=True, slots=True)
class Budget:
    """One budget a request counts against: a subject (a key, a user) and its quota."""

    subject: str
    quota: Quota


@dataclass(frozen=True, slots=True)
class Sequences:
    """A user's sequences in flight on one server (`subject` names both), counted in the shared storage where
    several API processes admit them: `count` more, at most `limit`."""

    subject: str
    limit: int
    count: int


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


def too_many_sequences(limit: int, count: int, held: int | None = None) -> LimitExceeded:
    """A user past its share of the server's admission (`held`: what it holds, where it is known)."""
    holding = f"{held} held and " if held is not None else ""
    return LimitExceeded(Limit.MAX_INFLIGHT_SEQUENCES,
                         f"too many sequences in flight for this user: {holding}{count} asked, at most {limit} on "
                         "this server (max_inflight_sequences_per_user; a generation counts n sequences); retry when "
                         "some finish", SEQUENCES_RETRY_AFTER_S)


@dataclass(frozen=True, slots=True)
class _Charge:
    key: str  # the limits library's key of the budget's tokens window
    tokens: int
    reset_at: float


class Reservation:
    """Tokens and stream slots held for one generation (the slots by one lease); `settle` gives back what was not
    used, once, and never raises: what the storage does not take now is retried (limiter_storage.GiveBacks)."""

    def __init__(self, limits: RateLimits, lease: str, lease_until: float) -> None:
        self._limits = limits
        self.lease = lease
        self.lease_until = lease_until
        self.charges: list[_Charge] = []
        self.slots: HeldSlots = []  # the slot keys that hold the lease, and how many slots in each
        self._settled = False

    @property
    def reserved_tokens(self) -> int:
        return max((charge.tokens for charge in self.charges), default=0)

    async def settle(self, used_tokens: int) -> None:
        if self._settled:
            return
        self._settled = True
        now = time.time()
        # Refund only into the window that was charged: after it reset, the charge is gone anyway.
        refunds = [(charge.key, charge.tokens - used_tokens, charge.reset_at) for charge in self.charges
                   if charge.tokens > used_tokens and now < charge.reset_at]
        if not refunds and not self.slots:
            return
        until = max([reset_at for _, _, reset_at in refunds] + ([self.lease_until] if self.slots else []))
        store = self._limits.storage.reservations
        await self._limits.storage.give_back(partial(store.give_back, refunds, list(self.slots), self.lease), until)


class RateLimits:
    def __init__(self, storage_uri: str, *, fail_open: bool, key_prefix: str = "codeface",
                 timeout_s: float = DEFAULT_TIMEOUT_S, retry_s: float = DEFAULT_RETRY_S) -> None:
        self.storage = GuardedStorage(storage_uri, fail_open=fail_open, timeout_s=timeout_s, retry_s=retry_s)
        self.requests = MovingWindowRateLimiter(self.storage.storage)
        self.tokens = FixedWindowRateLimiter(self.storage.storage)
        self.key_prefix = key_prefix

    async def hit_requests(self, budgets: list[Budget]) -> Window | None:
        """Count one request against every budget; the first budget's window goes in the response headers."""
        window = None
        for index, budget in enumerate(budgets):
            hit = await self.hit_request(budget.subject, budget.quota, with_window=index == 0)
            window = window or hit
        return window

    async def hit_request(self, subject: str, quota: Quota, *, with_window: bool = True) -> Window | None:
        """Count one request against the per-minute budget; raises LimitExceeded when it is spent. The window
        (what RateLimit-* headers report) costs one more storage call: `with_window` False skips it."""
        if quota.requests_per_minute is None:
            return None
        item = RateLimitItemPerMinute(quota.requests_per_minute, namespace=f"{self.key_prefix}-rpm")
        allowed = await self.storage.call(lambda: self.requests.hit(item, subject))
        if allowed is None:
            return None
        if not with_window and allowed:
            return None
        stats = await self.storage.call(lambda: self.requests.get_window_stats(item, subject))
        reset_s = max(0, math.ceil(stats.reset_time - time.time())) if stats is not None else MINUTE_S
        window = Window(quota.requests_per_minute, stats.remaining if stats is not None else 0, reset_s)
        if not allowed:
            raise LimitExceeded(Limit.REQUESTS_PER_MINUTE,
                                f"rate limit exceeded: {quota.requests_per_minute} requests per minute",
                                reset_s, window)
        return window

    async def reserve_all(self, budgets: list[Budget], tokens: int, sequences: Sequences | None = None) -> Reservation:
        """Hold `tokens` and a stream slot in every budget (and `sequences`' slots), or raise LimitExceeded having
        held nothing: one call to the storage (server.security.reservations)."""
        for budget in budgets:
            self._within_budget(budget.quota, tokens)
        reservation = Reservation(self, uuid.uuid4().hex, time.time() + SLOT_LEASE_S)
        items = [self._tokens_item(budget.quota) for budget in budgets]
        asks = [Ask(item.key_for(budget.subject) if item else None, item.amount if item else 0, MINUTE_S,
                    self._slots_key(budget.subject) if budget.quota.max_concurrent_streams is not None else None,
                    budget.quota.max_concurrent_streams or 0)
                for budget, item in zip(budgets, items, strict=True)]
        if sequences is not None:
            asks.append(Ask(None, 0, MINUTE_S, f"{self.key_prefix}-sequences/{sequences.subject}", sequences.limit,
                            sequences.count))
        if not any(ask.tokens_key or ask.slots_key for ask in asks):
            return reservation
        store, lease, until = self.storage.reservations, reservation.lease, reservation.lease_until
        # A call that failed or was cancelled may have landed all the same (its answer lost): its slots are given
        # back then (its tokens, if taken, go with their window).
        release = partial(store.give_back, [], held_slots(asks), lease)
        try:
            outcome = await self.storage.call(lambda: store.reserve(asks, tokens, lease, until), undo=release,
                                              undo_until=until)
        except asyncio.CancelledError:
            with anyio.CancelScope(shield=True):
                await self.storage.give_back(release, until)
            raise
        if outcome is None:
            return reservation  # the storage is down and the policy fails open: nothing is held
        if isinstance(outcome, Refused):
            if sequences is not None and outcome.index == len(budgets):
                raise too_many_sequences(sequences.limit, sequences.count)
            quota = budgets[outcome.index].quota
            if outcome.kind == Kind.TOKENS:
                raise LimitExceeded(Limit.TOKENS_PER_MINUTE,
                                    f"rate limit exceeded: {quota.tokens_per_minute} tokens per minute",
                                    math.ceil(outcome.reset_at - time.time()))
            raise LimitExceeded(Limit.MAX_CONCURRENT_STREAMS,
                                f"too many concurrent generations: at most {quota.max_concurrent_streams}", 1)
        for ask, reset_at in zip(asks, outcome.resets, strict=True):
            if ask.tokens_key is not None:
                reservation.charges.append(_Charge(ask.tokens_key, tokens,
                                                   reset_at if reset_at is not None else time.time() + MINUTE_S))
            if ask.slots_key is not None:
                reservation.slots.append((ask.slots_key, ask.slots_taken))
        return reservation

    async def check_tokens(self, budgets: list[Budget], tokens: int) -> None:
        """Raise LimitExceeded if `tokens` could not be reserved now in some budget, holding nothing (a request is
        checked before its prompt is rendered, with what it costs at least)."""
        for budget in budgets:
            item = self._tokens_item(budget.quota)
            if item is not None:
                await self._check_tokens(budget.subject, item, tokens)

    async def _check_tokens(self, subject: str, item: RateLimitItemPerMinute, tokens: int) -> None:
        tpm = item.amount
        if tokens > tpm:
            raise LimitExceeded(Limit.TOKENS_PER_MINUTE,
                                f"this request may use at least {tokens} tokens, more than the budget of {tpm} "
                                "tokens per minute; lower max_tokens or n", MINUTE_S)
        allowed = await self.storage.call(lambda: self.tokens.test(item, subject, cost=tokens))
        if allowed is False:
            stats = await self.storage.call(lambda: self.tokens.get_window_stats(item, subject))
            reset_s = math.ceil(stats.reset_time - time.time()) if stats is not None else MINUTE_S
            raise LimitExceeded(Limit.TOKENS_PER_MINUTE, f"rate limit exceeded: {tpm} tokens per minute", reset_s)

    async def reserve(self, subject: str, quota: Quota, tokens: int) -> Reservation:
        """One budget's reservation: `tokens` of the per-minute token budget and one concurrent-stream slot."""
        return await self.reserve_all([Budget(subject, quota)], tokens)

    @staticmethod
    def _within_budget(quota: Quota, tokens: int) -> None:
        """A request larger than a whole minute's budget can never be served: refused before the storage is asked."""
        if quota.tokens_per_minute is not None and tokens > quota.tokens_per_minute:
            raise LimitExceeded(Limit.TOKENS_PER_MINUTE,
                                f"this request may use {tokens} tokens, more than the budget of "
                                f"{quota.tokens_per_minute} tokens per minute; lower max_tokens", MINUTE_S)

    def _tokens_item(self, quota: Quota) -> RateLimitItemPerMinute | None:
        if quota.tokens_per_minute is None:
            return None
        return RateLimitItemPerMinute(quota.tokens_per_minute, namespace=f"{self.key_prefix}-tpm")

    def _slots_key(self, subject: str) -> str:
        return f"{self.key_prefix}-streams/{subject}"
