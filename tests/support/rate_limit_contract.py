"""The limiter's tests that every storage must pass, against the module's `limits` fixture: memory in
tests/fast/test_rate_limits_in_memory.py, Redis in tests/test_ratelimit.py."""

from __future__ import annotations

import uuid

import pytest

from server.security.ratelimit import LimitExceeded, Quota, RateLimits


def subject() -> str:
    return f"key:{uuid.uuid4()}"


async def test_requests_per_minute(limits: RateLimits) -> None:
    who, quota = subject(), Quota(3, None, None)
    windows = [await limits.hit_request(who, quota) for _ in range(3)]
    assert [w.remaining for w in windows] == [2, 1, 0] and all(w.limit == 3 for w in windows)
    with pytest.raises(LimitExceeded) as refused:
        await limits.hit_request(who, quota)
    assert refused.value.limit == "requests_per_minute" and 1 <= refused.value.retry_after_s <= 60
    assert await limits.hit_request(subject(), quota) is not None  # another key has its own budget


async def test_tokens_per_minute_reserve_and_settle(limits: RateLimits) -> None:
    who, quota = subject(), Quota(None, 100, None)
    first = await limits.reserve(who, quota, 60)
    with pytest.raises(LimitExceeded):
        await limits.reserve(who, quota, 50)  # 60 + 50 > 100
    await first.settle(20)  # used 20 of the 60 reserved: 40 come back
    second = await limits.reserve(who, quota, 50)  # 20 + 50 <= 100
    await second.settle(50)
    await second.settle(50)  # settling twice gives nothing back twice
    with pytest.raises(LimitExceeded):
        await limits.reserve(who, quota, 40)  # 20 + 50 + 40 > 100
    with pytest.raises(LimitExceeded, match="lower max_tokens"):
        await limits.reserve(subject(), quota, 101)  # can never fit


async def test_check_tokens_holds_nothing(limits: RateLimits) -> None:
    """The check before rendering: refuses what cannot fit now, and takes nothing from the budget."""
    from server.security.ratelimit import Budget

    who, quota = subject(), Quota(None, 100, None)
    await limits.check_tokens([Budget(who, quota)], 100)
    await limits.check_tokens([Budget(who, quota)], 100)  # twice: the first took nothing
    with pytest.raises(LimitExceeded, match="at least 101 tokens"):
        await limits.check_tokens([Budget(who, quota)], 101)
    await (await limits.reserve(who, quota, 60)).settle(60)
    with pytest.raises(LimitExceeded) as refused:
        await limits.check_tokens([Budget(who, quota)], 50)  # 60 + 50 > 100
    assert refused.value.limit == "tokens_per_minute" and 1 <= refused.value.retry_after_s <= 60


async def test_concurrent_streams(limits: RateLimits) -> None:
    who, quota = subject(), Quota(None, None, 2)
    held = [await limits.reserve(who, quota, 1) for _ in range(2)]
    with pytest.raises(LimitExceeded) as refused:
        await limits.reserve(who, quota, 1)
    assert refused.value.limit == "max_concurrent_streams"
    await held[0].settle(1)
    await (await limits.reserve(who, quota, 1)).settle(1)


async def test_unlimited_quota_costs_nothing(limits: RateLimits) -> None:
    unlimited = Quota(None, None, None)
    assert await limits.hit_request(subject(), unlimited) is None
    await (await limits.reserve(subject(), unlimited, 10 ** 9)).settle(0)


async def test_a_reservation_over_several_budgets_takes_all_or_none(limits: RateLimits) -> None:
    """A key's budget and its user's: when the user's refuses, the key's tokens and slot are not held either."""
    from server.security.ratelimit import Budget

    key, user = Budget(subject(), Quota(None, 100, 1)), Budget(subject(), Quota(None, 1000, 1))
    other_key = Budget(subject(), Quota(None, 100, 1))
    held = await limits.reserve_all([other_key, user], 10)  # the user's one slot, through another key
    with pytest.raises(LimitExceeded) as refused:
        await limits.reserve_all([key, user], 90)
    assert refused.value.limit == "max_concurrent_streams"
    # Nothing of the refused reservation was kept: the key's whole budget and its one slot are there to take.
    await (await limits.reserve_all([key], 100)).settle(100)
    await held.settle(10)
    with pytest.raises(LimitExceeded) as spent:
        await limits.reserve_all([Budget(user.subject, Quota(None, 1000, None))], 991)  # 10 used by the first
    assert spent.value.limit == "tokens_per_minute"
    await (await limits.reserve_all([key, user], 0)).settle(0)  # both slots came back


async def test_a_users_sequences_count_n_each_and_come_back(limits: RateLimits) -> None:
    """The user's share of a server's admission as several API processes count it: a generation takes n slots,
    all or none, and gives all n back; a refusal names the setting and holds nothing of the key's budget."""
    from server.security.ratelimit import Budget, Sequences

    on_server = f"server-{uuid.uuid4().hex}/user"
    key = Budget(subject(), Quota(None, 100, None))
    whole = await limits.reserve_all([key], 10, Sequences(on_server, 4, 4))  # exactly the share: admitted
    with pytest.raises(LimitExceeded) as refused:
        await limits.reserve_all([key], 10, Sequences(on_server, 4, 1))
    assert refused.value.limit == "max_inflight_sequences_per_user" and refused.value.retry_after_s == 1
    await (await limits.reserve_all([key], 90, None)).settle(0)  # the refused one held none of the key's tokens
    await whole.settle(10)
    three = await limits.reserve_all([key], 0, Sequences(on_server, 4, 3))  # all four came back
    with pytest.raises(LimitExceeded):
        await limits.reserve_all([key], 0, Sequences(on_server, 4, 2))  # 3 + 2 > 4: none of the two taken
    one = await limits.reserve_all([key], 0, Sequences(on_server, 4, 1))
    await (await limits.reserve_all([key], 0, Sequences(f"server-{uuid.uuid4().hex}/user", 4, 4))).settle(0)
    await three.settle(0)
    await one.settle(0)
