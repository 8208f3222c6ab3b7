"""SSE listener caps over real HTTP with real API keys: a user's keys share one cap (max_sse_listeners_per_user), so
that minting keys does not multiply the per-key cap; on an engine-less replica (listeners need no engine)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import httpx

from conftest import UNLIMITED, server_settings, user_with_key

API = "/api/v1/conversations"


def test_a_users_keys_share_one_listener_cap(start_replica, server_database_url: str, redis_url: str) -> None:
    from server import admin

    url = start_replica(server_database_url, redis_url, max_sse_listeners_per_key=2, max_sse_listeners_per_user=3)
    settings = server_settings(server_database_url, redis_url)
    username = f"tabs-{uuid.uuid4().hex[:8]}"
    first = user_with_key(settings, username)
    second = asyncio.run(admin.create_key(settings, username, "tests", None, UNLIMITED))
    other_user = user_with_key(settings, f"tabs-{uuid.uuid4().hex[:8]}")
    asyncio.run(listen_past_the_user_cap(url, first, second, other_user))


async def listen_past_the_user_cap(url: str, first: str, second: str, other_user: str) -> None:
    def as_key(key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    async with httpx.AsyncClient(base_url=url, timeout=30) as http, contextlib.AsyncExitStack() as streams:
        conversation_id = (await http.post(API, json={}, headers=as_key(first))).json()["id"]
        others = (await http.post(API, json={}, headers=as_key(other_user))).json()["id"]

        async def listen(key: str, conversation: str = conversation_id) -> httpx.Response:
            return await streams.enter_async_context(
                http.stream("GET", f"/api/v1/stream/{conversation}", headers=as_key(key)))

        opened = [await listen(first), await listen(first), await listen(second)]
        assert [response.status_code for response in opened] == [200, 200, 200]
        refused = await listen(second)  # the second key's own cap (2) is not reached, the user's (3) is
        assert refused.status_code == 429, refused.status_code  # (a 200 here is an endless stream: not read)
        assert "this user" in (await refused.aread()).decode()
        assert int(refused.headers["retry-after"]) > 0
        assert (await listen(other_user, others)).status_code == 200  # another user is not counted against it
        await opened[0].aclose()
        for _ in range(50):  # the closed stream's place is freed as the server sees the client leave
            if (response := await listen(second)).status_code == 200:
                break
            await asyncio.sleep(0.1)
        assert response.status_code == 200
