"""Rate limits on Redis, budgets shared by replicas through Redis, Redis down under both policies,
and global admission control."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest

from server.security.ratelimit import RateLimits

from support.rate_limit_contract import (  # noqa: F401
    test_a_reservation_over_several_budgets_takes_all_or_none,
    test_a_users_sequences_count_n_each_and_come_back,
    test_check_tokens_holds_nothing,
    test_concurrent_streams,
    test_requests_per_minute,
    test_tokens_per_minute_reserve_and_settle,
    test_unlimited_quota_costs_nothing,
)

DEAD_REDIS = "redis://127.0.0.1:1"
CHAT = "/v1/chat/completions"


@pytest.fixture
def limits(redis_url: str) -> RateLimits:
    """The limiter on Redis (the same tests on memory: tests/fast/test_rate_limits_in_memory.py)."""
    return RateLimits(redis_url, fail_open=False, key_prefix=f"test-{uuid.uuid4().hex[:8]}")


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
