"""The time to a stream's first token, for the tests that order queued requests (fairness, priority)."""

from __future__ import annotations

import time

import httpx

CHAT = "/v1/chat/completions"


async def first_token_at(http: httpx.AsyncClient, key: str, body: dict[str, object], started: float) -> float:
    headers = {"Authorization": f"Bearer {key}"}
    async with http.stream("POST", CHAT, json={**body, "stream": True}, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        async for line in response.aiter_lines():
            if line.startswith("data:") and '"content"' in line and '"content":""' not in line:
                return time.monotonic() - started
    raise AssertionError("no token")
