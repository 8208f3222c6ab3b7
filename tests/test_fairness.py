"""Fair share between tenants on the priority server (conftest's; auth on, so fairness is on by default; the engine
runs one sequence at a time, so that requests queue): a light tenant's request overtakes a heavy tenant's queued
ones, the per-tenant waits are in /metrics by share class, and one user cannot fill admission."""

from __future__ import annotations

import asyncio
import time

import httpx

from conftest import PriorityServer
from servers import SlotHolder
from support.first_token import first_token_at

CHAT = "/v1/chat/completions"
QUEUED = {"messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": 20, "ignore_eos": True}


async def test_a_light_tenant_overtakes_a_heavy_tenants_queue(priority_server: PriorityServer) -> None:
    url, heavy, light = priority_server.url, priority_server.keys["heavy"], priority_server.keys["light"]
    async with httpx.AsyncClient(base_url=url, timeout=300) as http:
        slot = SlotHolder(http, {"Authorization": f"Bearer {heavy}"})
        await slot.hold()  # the heavy tenant's first request holds the engine's one slot
        started = time.monotonic()
        backlog = [asyncio.create_task(first_token_at(http, heavy, QUEUED, started)) for _ in range(3)]
        await asyncio.sleep(0.3)
        light_first = asyncio.create_task(first_token_at(http, light, QUEUED, started))
        await asyncio.sleep(0.3)
        await slot.release()
        queued = await asyncio.gather(*backlog)
        # Under first come, first served the light tenant would wait for all three; fair share serves it next.
        assert await light_first < min(queued), (await light_first, queued)
        metrics = (await http.get("/metrics")).text
    assert 'codeface_tenant_time_to_first_token_seconds_count{model=' in metrics
    assert 'share="1-3"' in metrics and 'codeface_tenant_queue_time_seconds_count' in metrics


async def test_one_user_cannot_fill_admission(priority_server: PriorityServer) -> None:
    """The priority server admits 32 sequences, 16 per user: a user holding 16 (one request with n=16) gets 429
    naming the setting for more, where it would have taken the server's other 16, and another user gets in."""
    filler = {"Authorization": f"Bearer {priority_server.keys['late']}"}
    other = {"Authorization": f"Bearer {priority_server.keys['light']}"}
    long = {**QUEUED, "max_tokens": 1000, "n": 16, "stream": True}
    async with (httpx.AsyncClient(base_url=priority_server.url, timeout=120) as http,
                http.stream("POST", CHAT, json=long, headers=filler) as held):
        assert held.status_code == 200
        async with http.stream("POST", CHAT, json=long, headers=filler) as refused:
            assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
            assert "max_inflight_sequences_per_user" in (await refused.aread()).decode()
        async with http.stream("POST", CHAT, json={**QUEUED, "stream": True}, headers=other) as admitted:
            assert admitted.status_code == 200
