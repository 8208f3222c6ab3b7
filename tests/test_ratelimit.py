"""Rate limits with both storages, budgets shared by replicas through Redis, Redis down under both policies,
and global admission control."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest

from server.security.ratelimit import LimiterUnavailable, LimitExceeded, Quota, RateLimits

DEAD_REDIS = "redis://127.0.0.1:1"
CHAT = "/v1/chat/completions"


@pytest.fixture(params=["memory", "redis"])
def limits(request: pytest.FixtureRequest) -> RateLimits:
    uri = "memory://" if request.param == "memory" else request.getfixturevalue("redis_url")
    return RateLimits(uri, fail_open=False, key_prefix=f"test-{uuid.uuid4().hex[:8]}")


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


async def test_redis_down_fail_open_lets_requests_through() -> None:
    limits = RateLimits(DEAD_REDIS, fail_open=True)
    assert await limits.hit_request(subject(), Quota(1, 1, 1)) is None
    reservation = await limits.reserve(subject(), Quota(1, 10, 1), 5)
    await reservation.settle(5)


async def test_redis_down_fail_closed_refuses() -> None:
    limits = RateLimits(DEAD_REDIS, fail_open=False)
    with pytest.raises(LimiterUnavailable):
        await limits.hit_request(subject(), Quota(1, None, None))
    with pytest.raises(LimiterUnavailable):
        await limits.reserve(subject(), Quota(None, 10, None), 5)


# --- over HTTP ------------------------------------------------------------------------------------------------

def limited_key(server_url: str, auth_headers: dict[str, str], **limits: int) -> dict[str, str]:
    created = httpx.post(f"{server_url}/api/v1/keys", headers=auth_headers, json={"name": "limited", **limits})
    assert created.status_code == 201, created.text
    return {"Authorization": f"Bearer {created.json()['key']}"}


def test_two_replicas_share_one_redis_budget(start_replica, server_database_url: str, redis_url: str,
                                             server_url: str, auth_headers: dict[str, str]) -> None:
    replicas = [start_replica(server_database_url, redis_url) for _ in range(2)]
    key = limited_key(server_url, auth_headers, requests_per_minute=4)
    remaining = []
    for i in range(4):
        response = httpx.get(f"{replicas[i % 2]}/v1/models", headers=key)
        assert response.status_code == 200
        assert response.headers["ratelimit-limit"] == "4"
        remaining.append(int(response.headers["ratelimit-remaining"]))
    assert remaining == [3, 2, 1, 0]  # one budget, counted across both replicas
    refused = httpx.get(f"{replicas[0]}/v1/models", headers=key)
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1 and refused.headers["ratelimit-remaining"] == "0"
    assert refused.json()["error"]["type"] == "rate_limit_error"


@pytest.mark.parametrize("policy, status", [("open", 200), ("closed", 503)])
def test_redis_down_over_http(start_replica, server_database_url: str, server_url: str,
                              auth_headers: dict[str, str], policy: str, status: int) -> None:
    url = start_replica(server_database_url, DEAD_REDIS, rate_limit_failure=policy)
    key = limited_key(server_url, auth_headers, requests_per_minute=100)
    response = httpx.get(f"{url}/v1/models", headers=key)
    assert response.status_code == status
    assert httpx.get(f"{url}/healthz").status_code == 200  # the server keeps serving either way


def test_token_budget_over_http(server_url: str, auth_headers: dict[str, str]) -> None:
    key = limited_key(server_url, auth_headers, tokens_per_minute=300)
    chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 100}
    first = httpx.post(f"{server_url}{CHAT}", headers=key, json=chat, timeout=60)
    assert first.status_code == 200
    used = first.json()["usage"]["total_tokens"]
    # The first request reserved prompt + 100 and gave back what it did not use; a request that cannot fit in
    # what is left is refused with the envelope and Retry-After.
    too_big = httpx.post(f"{server_url}{CHAT}", headers=key, json={**chat, "max_tokens": 300 - used}, timeout=60)
    assert too_big.status_code == 429 and "tokens per minute" in too_big.json()["error"]["message"]
    assert int(too_big.headers["retry-after"]) >= 1


async def test_concurrent_streams_over_http(server_url: str, auth_headers: dict[str, str]) -> None:
    key = limited_key(server_url, auth_headers, max_concurrent_streams=1)
    long = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 500, "ignore_eos": True,
            "stream": True}
    async with httpx.AsyncClient(base_url=server_url, headers=key, timeout=60) as http:
        async with http.stream("POST", CHAT, json=long) as first:
            assert first.status_code == 200
            lines = first.aiter_lines()  # held: a dropped iterator would close the stream (httpx)
            await lines.__anext__()
            second = await http.post(CHAT, json={**long, "stream": False, "max_tokens": 4})
            assert second.status_code == 429 and "concurrent" in second.json()["error"]["message"]
        # Closing the first stream gives its slot back.
        for _ in range(50):
            third = await http.post(CHAT, json={**long, "stream": False, "max_tokens": 4})
            if third.status_code == 200:
                break
            await asyncio.sleep(0.1)
        assert third.status_code == 200


async def test_admission_control_answers_503_at_once(server_url: str, auth_headers: dict[str, str]) -> None:
    """The test server admits 24 generations in flight (max_inflight_generations)."""
    long = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1000, "ignore_eos": True,
            "stream": True}
    async with httpx.AsyncClient(base_url=server_url, headers=auth_headers, timeout=60) as http:
        streams = [http.stream("POST", CHAT, json=long) for _ in range(24)]
        opened = [await s.__aenter__() for s in streams]
        try:
            assert all(r.status_code == 200 for r in opened)
            refused = await http.post(CHAT, json={**long, "stream": False})
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            assert "capacity" in refused.json()["error"]["message"]
        finally:
            for s in streams:
                await s.__aexit__(None, None, None)


def test_rate_limit_headers_on_every_protected_response(server_url: str, auth_headers: dict[str, str]) -> None:
    key = limited_key(server_url, auth_headers, requests_per_minute=100)
    response = httpx.get(f"{server_url}/v1/models", headers=key)
    assert response.headers["ratelimit-limit"] == "100" and int(response.headers["ratelimit-reset"]) <= 60
