"""The login guard's budgets in-process (memory storage): per address and per username from one address, and the
block that doubles each time a budget is spent again."""

from __future__ import annotations

import pytest

from server.exceptions import RateLimited
from server.security.budgets import BACKOFF_BASE_S, BACKOFF_MAX_S, backoff_s
from server.security.login import LoginGuard
from server.security.ratelimit import RateLimits


def guard() -> LoginGuard:
    return LoginGuard(RateLimits("memory://", fail_open=True), per_address=30, per_username=3, concurrent_hashes=1)


async def test_one_address_spends_only_its_own_budget_for_a_name() -> None:
    login = guard()
    for _ in range(3):
        await login.check("198.51.100.1", "ann")
    with pytest.raises(RateLimited):
        await login.check("198.51.100.1", "ann")
    await login.check("198.51.100.2", "ann")  # the same name from elsewhere


async def test_each_block_again_lasts_longer() -> None:
    login = guard()
    waits = []
    for _ in range(3):
        for _ in range(3):
            await login.check("198.51.100.1", "ann")
        with pytest.raises(RateLimited) as refused:
            await login.check("198.51.100.1", "ann")
        waits.append(refused.value.retry_after_s)
        # The block over and the window free again (as a minute later): the next strike is remembered.
        budget = login.per_username
        budget._strikes["login-username:198.51.100.1:ann"].blocked_until = 0
        budget.local = RateLimits("memory://", fail_open=False)
        budget.limits = RateLimits("memory://", fail_open=True)
    assert waits[1] == BACKOFF_BASE_S and waits[2] == 2 * BACKOFF_BASE_S, waits


def test_backoff_is_capped() -> None:
    assert backoff_s(1, 7) == 7 and backoff_s(2, 7) == BACKOFF_BASE_S and backoff_s(30, 7) == BACKOFF_MAX_S
