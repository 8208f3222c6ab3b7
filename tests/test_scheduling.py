"""The priority server (conftest's: its engine orders its queue by priority and runs one sequence at a time, so
that requests queue; auth on, so each tenant's requests keep to its fair share): a request's priority orders it
among other tenants' requests of the same share, queued streams get keep-alive comments, and tool_choice required
works with no tool parser configured (vLLM constrains the output to the tool's JSON schema)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import jsonschema

from conftest import PriorityServer
from servers import SlotHolder
from support.first_token import first_token_at

CHAT = "/v1/chat/completions"
SHORT = {"messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": 20, "ignore_eos": True}
TOOL = {"type": "function", "function": {"name": "add", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}}


def bearer(server: PriorityServer, tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.keys[tenant]}"}


async def test_priority_orders_the_queue(priority_server: PriorityServer) -> None:
    """Three tenants, none with anything queued, so all of one share: only the requests' priorities order them."""
    keys = priority_server.keys
    async with httpx.AsyncClient(base_url=priority_server.url, timeout=300) as http:
        slot = SlotHolder(http, bearer(priority_server, "heavy"))
        await slot.hold()  # the next two wait behind it
        started = time.monotonic()
        late = asyncio.create_task(first_token_at(http, keys["late"], {**SHORT, "priority": 5}, started))
        await asyncio.sleep(0.3)
        urgent = asyncio.create_task(first_token_at(http, keys["urgent"], {**SHORT, "priority": -5}, started))
        await asyncio.sleep(0.3)
        await slot.release()
        assert await urgent < await late  # submitted later, served first


async def test_queued_streams_get_keep_alive_comments(priority_server: PriorityServer) -> None:
    async with httpx.AsyncClient(base_url=priority_server.url, timeout=300) as http:
        slot = SlotHolder(http, bearer(priority_server, "heavy"))
        await slot.hold()
        comments = 0
        async with http.stream("POST", CHAT, json={**SHORT, "max_tokens": 2, "stream": True},
                               headers=bearer(priority_server, "light")) as response:
            async for line in response.aiter_lines():
                if line.startswith(":"):
                    comments += 1
                    if comments == 2:
                        await slot.release()
                elif line.startswith("data:"):
                    break
    assert comments >= 2  # one every 0.3 s while the long request runs


def test_required_tool_call_without_a_tool_parser(priority_server: PriorityServer) -> None:
    body = {"messages": [{"role": "user", "content": "Add 2 and 3."}], "tools": [TOOL], "max_tokens": 60,
            "temperature": 0}
    headers = bearer(priority_server, "light")
    response = httpx.post(f"{priority_server.url}{CHAT}", json={**body, "tool_choice": "required"},
                          headers=headers, timeout=300)
    call = response.json()["choices"][0]["message"]["tool_calls"][0]["function"]
    assert call["name"] == "add"
    jsonschema.validate(json.loads(call["arguments"]), TOOL["function"]["parameters"])
    refused = httpx.post(f"{priority_server.url}{CHAT}", json={**body, "tool_choice": "auto"}, headers=headers,
                         timeout=60)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "tool_choice"


def test_priority_needs_the_priority_policy(server_url: str, auth_headers: dict[str, str]) -> None:
    """The main test server schedules first come, first served: a priority would be ignored, so it is refused."""
    response = httpx.post(f"{server_url}{CHAT}", headers=auth_headers, timeout=60,
                          json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "priority": 3})
    assert response.status_code == 400 and response.json()["error"]["param"] == "priority"


def test_generation_config_defaults_under_the_profile(tmp_path: Path) -> None:
    """The model's generation_config.json sets the defaults; the profile's values override them."""
    import shutil

    from vllm.config import ModelConfig

    from engine.chat import default_sampling
    from engine.model_prep import DEFAULT_MODEL_NAME, default_cache_dir

    source = default_cache_dir() / DEFAULT_MODEL_NAME
    model = tmp_path / "model"
    model.mkdir()
    for item in source.iterdir():
        if item.name != "generation_config.json":
            (model / item.name).symlink_to(item)
    config = json.loads((source / "generation_config.json").read_text())
    (model / "generation_config.json").write_text(json.dumps({**config, "temperature": 0.3, "top_p": 0.8}))
    model_config = ModelConfig(model=str(model))
    assert default_sampling(model_config, {}) == {"temperature": 0.3, "top_p": 0.8}
    assert default_sampling(model_config, {"temperature": 0.9}) == {"temperature": 0.9, "top_p": 0.8}
    shutil.rmtree(model)
