"""Fair share between tenants on a server of its own (auth on, so fairness is on by default; the engine runs one
sequence at a time, so that requests queue): a light tenant's request overtakes a heavy tenant's queued ones, and
the per-tenant waits are in /metrics by share class."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import free_port
from servers import SlotHolder, SpawnedServer

CHAT = "/v1/chat/completions"
SECRET = "fairness-secret-key-with-enough-entropy-0123"
QUEUED = {"messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": 20, "ignore_eos": True}
UNLIMITED = {"requests_per_minute": 0, "tokens_per_minute": 0, "max_concurrent_streams": 0}


def tenant_key(settings: object, name: str) -> str:
    """A user of its own (a tenant) with an unlimited key, made with the admin CLI's functions."""
    from server import admin

    asyncio.run(admin.create_user(settings, name, "tenant-password-1", False))
    return asyncio.run(admin.create_key(settings, name, name, None, UNLIMITED))


@pytest.fixture(scope="module")
def fair_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, str]]:
    from server.settings import load_settings
    from storage import upgrade_database

    folder: Path = tmp_path_factory.mktemp("fair")
    database_url = f"sqlite+aiosqlite:///{folder}/fair.db"
    upgrade_database(database_url)
    settings = load_settings(None, database_url=database_url, secret_key=SECRET)
    heavy, light = tenant_key(settings, "heavy"), tenant_key(settings, "light")
    server = SpawnedServer(free_port(), folder / "server.log", database_url=database_url,
                           settings={"auth_enabled": True, "secret_key": SECRET, "scheduling_policy": "priority",
                                     "max_num_seqs": 1, "kv_cache_space_gib": 1, "user_max_concurrent_streams": 1000,
                                     "user_requests_per_minute": 100_000, "user_tokens_per_minute": 10 ** 9})
    server.start()
    try:
        yield server.url, heavy, light
    finally:
        server.stop()


async def first_token_at(http: httpx.AsyncClient, key: str, body: dict[str, object], started: float) -> float:
    headers = {"Authorization": f"Bearer {key}"}
    async with http.stream("POST", CHAT, json={**body, "stream": True}, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        async for line in response.aiter_lines():
            if line.startswith("data:") and '"content"' in line and '"content":""' not in line:
                return time.monotonic() - started
    raise AssertionError("no token")


async def test_a_light_tenant_overtakes_a_heavy_tenants_queue(fair_server: tuple[str, str, str]) -> None:
    url, heavy, light = fair_server
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
