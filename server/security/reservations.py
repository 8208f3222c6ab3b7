"""A generation's reservation: its tokens and a stream slot in every budget it counts against, all or none, and what
it did not use given back. In Redis each is one script (one round trip, where it was three per budget on the way in
and two on the way out); in memory the same steps in process. Tokens are counted in the limits library's fixed
window (its keys, read by its strategies elsewhere); stream slots are leases that expire one by one, so a crashed
replica's slots come back and a busy counter can never expire as a whole and go negative."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Protocol

# KEYS: per budget, its tokens counter then its slot leases. ARGV: now, the lease, its expiry (wall clock), the slot
# key's life in seconds, the tokens, then per budget: its tokens limit and window in seconds, its slots limit (-1:
# that budget has no such limit) and how many slots the lease takes there (one member each: `lease`, `lease#2`...).
# Everything is checked before anything is taken; then the tokens are counted as the limits library's fixed window
# counts them (INCRBY, and EXPIRE on a new window) and the lease is added. Returns {0, the windows' remaining
# seconds per budget (-1: none)}, or {budget (from 1), kind (1: tokens, 2: slots), the refusing window's remaining
# seconds}.
RESERVE = """
local now, lease, lease_until, lease_ttl, tokens = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local budgets = #KEYS / 2
for i = 1, budgets do
  local tokens_limit, slots_limit = tonumber(ARGV[4 * i + 2]), tonumber(ARGV[4 * i + 4])
  if tokens_limit >= 0 and tonumber(redis.call('GET', KEYS[2 * i - 1]) or '0') + tokens > tokens_limit then
    return {i, 1, redis.call('TTL', KEYS[2 * i - 1])}
  end
  if slots_limit >= 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[2 * i], '-inf', now)
    if redis.call('ZCARD', KEYS[2 * i]) + tonumber(ARGV[4 * i + 5]) > slots_limit then return {i, 2, 0} end
  end
end
local resets = {0}
for i = 1, budgets do
  local reset = -1
  if tonumber(ARGV[4 * i + 2]) >= 0 then
    if redis.call('INCRBY', KEYS[2 * i - 1], tokens) == tokens then
      redis.call('EXPIRE', KEYS[2 * i - 1], ARGV[4 * i + 3])
    end
    reset = redis.call('TTL', KEYS[2 * i - 1])
  end
  if tonumber(ARGV[4 * i + 4]) >= 0 then
    for j = 1, tonumber(ARGV[4 * i + 5]) do
      redis.call('ZADD', KEYS[2 * i], lease_until, j == 1 and lease or lease .. '#' .. j)
    end
    redis.call('EXPIRE', KEYS[2 * i], lease_ttl)
  end
  resets[i + 1] = reset
end
return resets
"""

# KEYS: the charged tokens counters, then the slot leases. ARGV: now (wall clock), the number of counters, the
# lease, then per counter: the tokens to give back and when its window resets (after that the charge is gone with
# the window, and a refund would go to the next one); then per slot key, how many slots the lease holds there.
GIVE_BACK = """
local now, counters, lease = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
for i = 1, counters do
  if now < tonumber(ARGV[2 * i + 3]) and redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('DECRBY', KEYS[i], ARGV[2 * i + 2])
  end
end
for i = counters + 1, #KEYS do
  for j = 1, tonumber(ARGV[counters + i + 3]) do
    redis.call('ZREM', KEYS[i], j == 1 and lease or lease .. '#' .. j)
  end
end
return 0
"""

NO_LIMIT = -1


class Kind(IntEnum):
    """Which of a budget's limits refused (the script's code for it)."""

    TOKENS = 1
    SLOTS = 2


@dataclass(frozen=True, slots=True)
class Ask:
    """One budget's part: its tokens counter (the limits library's key, unprefixed) and limit, and its slot leases'
    key and limit; None where the budget has no such limit. `slots_taken`: how many slots the lease takes (a stream
    takes one; a user's sequences, one per sequence)."""

    tokens_key: str | None
    tokens_limit: int
    window_s: int
    slots_key: str | None
    slots_limit: int
    slots_taken: int = 1


# A lease's slots in one key: (the key, how many slots the lease holds there).
HeldSlots = list[tuple[str, int]]


def members(lease: str, taken: int) -> list[str]:
    """The members a lease holds in a slots key (as the scripts name them)."""
    return [lease if index == 1 else f"{lease}#{index}" for index in range(1, taken + 1)]


@dataclass(frozen=True, slots=True)
class Refused:
    """The first budget (its index among the asks) and limit that refused; `reset_at`: when that window resets."""

    index: int
    kind: Kind
    reset_at: float


@dataclass(frozen=True, slots=True)
class Held:
    """Everything was taken; `resets`: per ask, when its tokens window resets (None: no tokens were charged)."""

    resets: list[float | None]


def held_slots(asks: list[Ask]) -> HeldSlots:
    """The slots these asks take, as give_back releases them."""
    return [(ask.slots_key, ask.slots_taken) for ask in asks if ask.slots_key is not None]


class Reservations(Protocol):
    async def reserve(self, asks: list[Ask], tokens: int, lease: str, lease_until: float) -> Held | Refused: ...

    async def give_back(self, refunds: list[tuple[str, int, float]], slots: HeldSlots, lease: str) -> None:
        """`refunds`: (tokens key, tokens, when its window resets); the lease's slots are released from each key."""


class RedisReservations:
    """The two scripts over a connection of their own; `prefixed` turns a limits key into the one it stores."""

    def __init__(self, url: str, timeout_s: float, prefixed: Callable[[str], str]) -> None:
        import coredis

        # The call's own bound (limiter_storage.bounded) decides; the socket's timeouts only stop a connection that
        # never answers.
        self.client: Any = coredis.Redis.from_url(url, stream_timeout=timeout_s * 4, connect_timeout=timeout_s * 4)
        self.prefixed = prefixed
        self._reserve: Any = self.client.register_script(RESERVE)
        self._give_back: Any = self.client.register_script(GIVE_BACK)

    async def warm_up(self) -> None:
        await self.client.ping()
        for script in (RESERVE, GIVE_BACK):
            await self.client.script_load(script)

    async def reserve(self, asks: list[Ask], tokens: int, lease: str, lease_until: float) -> Held | Refused:
        keys: list[str] = []
        now = time.time()
        # The slot keys live as long as their newest lease.
        args: list[str | int | float] = [now, lease, lease_until, math.ceil(lease_until - now), tokens]
        for index, ask in enumerate(asks):
            # A budget without one of the limits still fills its key's place (never read nor written).
            keys += [self.prefixed(ask.tokens_key) if ask.tokens_key else f"unused-tokens-{index}",
                     ask.slots_key or f"unused-slots-{index}"]
            args += [ask.tokens_limit if ask.tokens_key else NO_LIMIT, ask.window_s,
                     ask.slots_limit if ask.slots_key else NO_LIMIT, ask.slots_taken]
        answer = [int(value) for value in await self._reserve(keys=keys, args=args)]
        if answer[0]:
            return Refused(answer[0] - 1, Kind(answer[1]), now + max(0, answer[2]))
        return Held([now + ttl if ttl >= 0 else None for ttl in answer[1:]])

    async def give_back(self, refunds: list[tuple[str, int, float]], slots: HeldSlots, lease: str) -> None:
        keys = [self.prefixed(key) for key, _, _ in refunds] + [key for key, _ in slots]
        args: list[str | int | float] = [time.time(), len(refunds), lease]
        for _, tokens, reset_at in refunds:
            args += [tokens, reset_at]
        args += [taken for _, taken in slots]
        await self._give_back(keys=keys, args=args)


class MemoryReservations:
    """The same in this process: tokens in the limits library's memory storage, taken and taken back if over (its
    calls may yield, so a check before taking could let two requests through), slot leases in a dict."""

    def __init__(self, storage: Any) -> None:
        self.storage = storage
        self.leases: dict[str, dict[str, float]] = {}

    async def reserve(self, asks: list[Ask], tokens: int, lease: str, lease_until: float) -> Held | Refused:
        resets: list[float | None] = []
        for index, ask in enumerate(asks):
            reset = None
            if ask.tokens_key is not None:
                count = await self.storage.incr(ask.tokens_key, ask.window_s, amount=tokens)
                reset = await self.storage.get_expiry(ask.tokens_key)
                if count > ask.tokens_limit:
                    await self.storage.decr(ask.tokens_key, tokens)
                    await self._undo(asks[:index], resets, tokens, lease)
                    return Refused(index, Kind.TOKENS, reset)
            if ask.slots_key is not None and not self._take_slots(ask.slots_key, ask, lease, lease_until):
                await self._undo(asks[:index + 1], [*resets, reset], tokens, lease)
                return Refused(index, Kind.SLOTS, time.time())
            resets.append(reset)
        return Held(resets)

    def _take_slots(self, key: str, ask: Ask, lease: str, until: float) -> bool:
        now = time.time()
        held = {name: expires for name, expires in self.leases.get(key, {}).items() if expires > now}
        self.leases[key] = held
        if len(held) + ask.slots_taken > ask.slots_limit:
            return False
        held.update(dict.fromkeys(members(lease, ask.slots_taken), until))
        return True

    async def _undo(self, asks: list[Ask], resets: list[float | None], tokens: int, lease: str) -> None:
        refunds = [(ask.tokens_key, tokens, reset) for ask, reset in zip(asks, resets, strict=True)
                   if ask.tokens_key is not None and reset is not None]
        await self.give_back(refunds, held_slots(asks), lease)

    async def give_back(self, refunds: list[tuple[str, int, float]], slots: HeldSlots, lease: str) -> None:
        now = time.time()
        for key, tokens, reset_at in refunds:
            if now < reset_at:
                await self.storage.decr(key, tokens)
        for key, taken in slots:
            held = self.leases.get(key)
            if held is not None:
                for member in members(lease, taken):
                    held.pop(member, None)
                if not held:
                    del self.leases[key]
