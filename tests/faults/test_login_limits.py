"""Password guessing against real replicas (processes of their own, real client addresses on loopback): one address
hammering a username does not lock its owner out from another address, and with the limiter's Redis stopped
(connections refused) under the fail-open policy, the in-process budgets still answer 429."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import httpx

from conftest import server_settings, user_with_key
from faults.conftest import OwnRedis

TOKEN = "/api/v1/auth/token"
PER_ADDRESS = 30
PER_USERNAME = 10
ATTACKER = "127.0.0.2"
OWNER = "127.0.0.3"


def from_address(url: str, address: str) -> httpx.Client:
    """A client whose connections come from `address` (any of 127.0.0.0/8 is this machine's loopback)."""
    return httpx.Client(base_url=url, timeout=30, transport=httpx.HTTPTransport(local_address=address))


def victim(database_url: str, redis_url: str) -> tuple[str, str]:
    username = f"victim-{uuid.uuid4().hex[:8]}"
    user_with_key(server_settings(database_url, redis_url), username)
    return username, f"{username}-password-1"  # the password user_with_key gives


def guesses(http: httpx.Client, username: str, count: int) -> list[int]:
    return [http.post(TOKEN, data={"username": username, "password": "a-wrong-guess"}).status_code
            for _ in range(count)]


def test_one_address_hammering_a_username_does_not_lock_out_its_owner(
        spawn_frontend: Callable[..., str], server_database_url: str, redis_url: str,
        measured: Callable[[str, object], None]) -> None:
    username, password = victim(server_database_url, redis_url)
    url = spawn_frontend(server_database_url, redis_url, login_attempts_per_minute_per_address=PER_ADDRESS,
                         login_attempts_per_minute_per_username=PER_USERNAME)
    with from_address(url, ATTACKER) as attacker, from_address(url, OWNER) as owner:
        statuses = guesses(attacker, username, PER_USERNAME + 5)
        assert statuses == [401] * PER_USERNAME + [429] * 5, statuses
        refused = attacker.post(TOKEN, data={"username": username, "password": password})
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
        # The owner, from another address, logs in at once.
        response = owner.post(TOKEN, data={"username": username, "password": password})
        assert response.status_code == 200, response.text
    measured("attacker's 15 guesses", f"{statuses.count(401)} got 401, {statuses.count(429)} got 429; owner: 200")


def test_redis_stopped_the_login_limits_still_answer_429(spawn_frontend: Callable[..., str],
                                                         server_database_url: str, own_redis: OwnRedis,
                                                         measured: Callable[[str, object], None]) -> None:
    username, _ = victim(server_database_url, own_redis.url)
    own_redis.stop()  # connections refused from now on
    try:
        url = spawn_frontend(server_database_url, own_redis.url, rate_limit_failure="open",
                             login_attempts_per_minute_per_address=PER_ADDRESS,
                             login_attempts_per_minute_per_username=PER_USERNAME)
        with from_address(url, ATTACKER) as attacker:
            statuses = guesses(attacker, username, PER_USERNAME + 5)
            others = [attacker.post(TOKEN, data={"username": f"nobody-{i}", "password": "x"}).status_code
                      for i in range(PER_ADDRESS)]
    finally:
        own_redis.start()
    measured("Redis stopped: 15 guesses at one name, then 30 at others",
             f"{statuses.count(429)} and {others.count(429)} got 429")
    assert statuses == [401] * PER_USERNAME + [429] * 5, statuses
    # The address's own budget (30 a minute, the 15 above included) holds as well.
    assert others.count(401) == PER_ADDRESS - PER_USERNAME - 5 and set(others) == {401, 429}, others
