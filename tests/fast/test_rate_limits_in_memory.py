"""The limiter on memory (the storage of a single-process deployment), and a limiter whose Redis is down under both
failure policies (a port nothing listens on: no Redis needed)."""

from __future__ import annotations

import uuid

import pytest

from server.security.ratelimit import LimiterUnavailable, Quota, RateLimits

from support.rate_limit_contract import (  # noqa: F401
    subject,
    test_a_reservation_over_several_budgets_takes_all_or_none,
    test_a_users_sequences_count_n_each_and_come_back,
    test_check_tokens_holds_nothing,
    test_concurrent_streams,
    test_requests_per_minute,
    test_tokens_per_minute_reserve_and_settle,
    test_unlimited_quota_costs_nothing,
)

DEAD_REDIS = "redis://127.0.0.1:1"


@pytest.fixture
def limits() -> RateLimits:
    return RateLimits("memory://", fail_open=False, key_prefix=f"test-{uuid.uuid4().hex[:8]}")


async def test_redis_down_fail_open_lets_requests_through() -> None:
    limits = RateLimits(DEAD_REDIS, fail_open=True)
    assert await limits.hit_request(subject(), Quota(1, 1, 1)) is None
    reservation = await limits.reserve(subject(), Quota(1, 10, 1), 5)
    await reservation.settle(5)


async def test_a_slot_lease_first_on_a_dead_redis_follows_the_policy() -> None:
    """A stream slot alone (no request or token budget to open the breaker first): the lease's own Redis error is
    the failure policy's case, served unlimited or refused, never coredis' ConnectionError escaping as a 500."""
    served = await RateLimits(DEAD_REDIS, fail_open=True).reserve(subject(), Quota(None, None, 1), 5)
    assert served.slots == []
    await served.settle(5)
    with pytest.raises(LimiterUnavailable):
        await RateLimits(DEAD_REDIS, fail_open=False).reserve(subject(), Quota(None, None, 1), 5)


async def test_redis_down_fail_closed_refuses() -> None:
    limits = RateLimits(DEAD_REDIS, fail_open=False)
    with pytest.raises(LimiterUnavailable):
        await limits.hit_request(subject(), Quota(1, None, None))
    with pytest.raises(LimiterUnavailable):
        await limits.reserve(subject(), Quota(None, 10, None), 5)
