"""LoRA adapters on the real CPU engine, with adapters made here (PEFT, rank 8, fixed seeds, non-zero B): an
adapter's greedy output differs from the base model's and equals vLLM's offline LLM with the same LoRA request (the
adapter is applied, not just accepted); two adapters and the base in one concurrent batch each give their own
output; a key limited to one adapter gets 404 for another; a conversation pinned to an adapter replies with it; an
adapter an admin loads at run time is served again after a restart; a missing folder, a rank above max_lora_rank
and a taken name are each a 4xx that changes nothing."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from loadtests.ports import free_port

from servers import SpawnedServer
from support.lora import make_adapter, offline_outputs

ROOT = Path(__file__).resolve().parent.parent
SECRET = "lora-secret-key-with-enough-entropy-0123456789"
PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,"]
MAX_TOKENS = 8
MAX_LORA_RANK = 16
BASE = "SmolLM2-135M-Instruct"
A, B, C = "tenant-a", "tenant-b", "tenant-c"
LOAD = "/v1/load_lora_adapter"


@dataclass
class Adapters:
    base_model: str
    paths: dict[str, str]   # A, B (in the profile), C (loaded at run time), and one of rank 32
    too_wide: str


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> Adapters:
    from server.cli import resolve_model
    from server.settings import load_settings

    base_model = resolve_model(load_settings(ROOT / "configs/cpu.yaml"))
    folder = tmp_path_factory.mktemp("adapters")
    paths = {name: str(make_adapter(base_model, folder / name, seed=seed))
             for seed, name in enumerate((A, B, C), start=1)}
    too_wide = str(make_adapter(base_model, folder / "rank-32", seed=9, rank=32))
    return Adapters(base_model, paths, too_wide)


def engine_options() -> dict[str, Any]:
    return {"enable_lora": True, "max_loras": 3, "max_lora_rank": MAX_LORA_RANK, "kv_cache_space_gib": 1}


@pytest.fixture(scope="module")
def reference(adapters: Adapters) -> dict[str, list[str]]:
    """vLLM's offline LLM, with the CPU profile's engine options, for the base model and each adapter. Run before
    the server starts (the fixture order of the tests below): one engine in memory at a time."""
    from engine.config import engine_environment
    from server.settings import load_settings

    config = load_settings(ROOT / "configs/cpu.yaml", **engine_options()).engine_config(adapters.base_model)
    return offline_outputs(config.engine_kwargs(), {BASE: None, **adapters.paths}, PROMPTS, MAX_TOKENS,
                           engine_environment(config))


@dataclass
class LoraServer:
    server: SpawnedServer
    admin: dict[str, str]
    only_a: dict[str, str]


@pytest.fixture(scope="module")
def lora_server(adapters: Adapters, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoraServer]:
    """A server with A and B in its profile, auth on, SQLite; an admin's key and a key limited to A."""
    from server import admin
    from server.settings import load_settings
    from storage import upgrade_database

    folder = tmp_path_factory.mktemp("lora-server")
    database_url = f"sqlite+aiosqlite:///{folder}/lora.db"
    upgrade_database(database_url)
    settings = {"auth_enabled": True, "secret_key": SECRET, "metrics_public": True, **engine_options(),
                "lora_adapters": json.dumps({A: adapters.paths[A], B: adapters.paths[B]})}
    server = SpawnedServer(free_port(), folder / "server.log", database_url=database_url, settings=settings)
    server.start()
    held = load_settings(None, database_url=database_url, secret_key=SECRET)
    keys = {}
    for name, is_admin, models in (("root", True, None), ("only-a", False, [A])):
        asyncio.run(admin.create_user(held, name, f"{name}-password-1", is_admin, models))
        keys[name] = {"Authorization": f"Bearer {asyncio.run(admin.create_key(held, name, 'tests', None, {}))}"}
    lora = LoraServer(server, keys["root"], keys["only-a"])
    try:
        yield lora
    finally:
        lora.server.stop_soon()


async def complete(client: httpx.AsyncClient, model: str, prompt: str, headers: dict[str, str]) -> str:
    response = await client.post("/v1/completions", headers=headers, json={
        "model": model, "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == model
    text: str = body["choices"][0]["text"]
    return text


def one_at_a_time(url: str, model: str, headers: dict[str, str]) -> list[str]:
    async def run() -> list[str]:
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            return [await complete(client, model, prompt, headers) for prompt in PROMPTS]

    return asyncio.run(run())


def test_an_adapter_is_applied_as_vllms_offline_llm_applies_it(reference: dict[str, list[str]],
                                                               lora_server: LoraServer) -> None:
    url, headers = lora_server.server.url, lora_server.admin
    served = {model: one_at_a_time(url, model, headers) for model in (BASE, A, B)}
    assert served[BASE] == reference[BASE]
    for adapter in (A, B):
        assert served[adapter] != served[BASE], f"{adapter} gives the base model's output: not applied"
        assert served[adapter] == reference[adapter], adapter
    assert served[A] != served[B]


def test_two_adapters_and_the_base_in_one_batch(reference: dict[str, list[str]], lora_server: LoraServer) -> None:
    async def run() -> list[str]:
        async with httpx.AsyncClient(base_url=lora_server.server.url, timeout=120) as client:
            return list(await asyncio.gather(*(complete(client, model, PROMPTS[0], lora_server.admin)
                                               for model in (BASE, A, B, A, BASE, B))))

    together = asyncio.run(run())
    assert together == [reference[model][0] for model in (BASE, A, B, A, BASE, B)]


def test_models_lists_the_adapters_a_caller_may_use(lora_server: LoraServer, adapters: Adapters) -> None:
    url = lora_server.server.url
    cards = httpx.get(f"{url}/v1/models", headers=lora_server.admin).json()["data"]
    assert [(c["id"], c["parent"]) for c in cards][:3] == [(BASE, None), (A, BASE), (B, BASE)]
    assert cards[1]["root"] == adapters.paths[A]
    only_a = httpx.get(f"{url}/v1/models", headers=lora_server.only_a).json()["data"]
    assert [c["id"] for c in only_a] == [A]


def test_a_key_limited_to_one_adapter_gets_404_for_another(lora_server: LoraServer) -> None:
    url, headers = lora_server.server.url, lora_server.only_a
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    assert httpx.post(f"{url}/v1/chat/completions", headers=headers, json={**body, "model": A},
                      timeout=60).status_code == 200
    for model in (B, BASE, "no-such-model"):
        response = httpx.post(f"{url}/v1/chat/completions", headers=headers, json={**body, "model": model})
        assert response.status_code == 404, model
        assert response.json()["error"]["message"].startswith(f"the model {model!r} does not exist")
    messages = httpx.post(f"{url}/v1/messages", headers=headers, json={**body, "model": B})
    assert messages.status_code == 404


def test_a_pinned_conversation_replies_with_the_adapter(lora_server: LoraServer) -> None:
    """A conversation pinned to A, a message naming no model: its greedy reply is A's chat completion of the same
    message, not the base model's."""
    url, headers = lora_server.server.url, lora_server.admin
    turn = {"max_tokens": MAX_TOKENS, "temperature": 0}
    with httpx.Client(base_url=url, headers=headers, timeout=120) as client:
        def chat(model: str) -> str:
            response = client.post("/v1/chat/completions", json={
                "model": model, "messages": [{"role": "user", "content": PROMPTS[0]}], **turn})
            assert response.status_code == 200, response.text
            text: str = response.json()["choices"][0]["message"]["content"]
            return text

        made = client.post("/api/v1/conversations", json={"model": A})
        assert made.status_code == 201 and made.json()["model"] == A, made.text
        reply = client.post(f"/api/v1/conversations/{made.json()['id']}/messages", json={"content": PROMPTS[0], **turn})
        assert reply.status_code == 201, reply.text
        adapter, base = chat(A), chat(BASE)
    assert adapter != base
    assert reply.json()["reply"] == adapter


def test_bad_loads_are_4xx_and_change_nothing(lora_server: LoraServer, adapters: Adapters, tmp_path: Path) -> None:
    url, headers = lora_server.server.url, lora_server.admin
    before = httpx.get(f"{url}/v1/models", headers=headers).json()
    malformed = tmp_path / "malformed"
    malformed.mkdir()
    (malformed / "adapter_config.json").write_text('{"r": 8')
    for body, status, said in (
            ({"lora_name": "missing", "lora_path": str(tmp_path / "nothing-here")}, 400, "No adapter found"),
            ({"lora_name": "too-wide", "lora_path": adapters.too_wide}, 400, "greater than max_lora_rank"),
            ({"lora_name": "malformed", "lora_path": str(malformed)}, 400, "does not load"),
            ({"lora_name": A, "lora_path": adapters.paths[C]}, 409, "taken"),
            ({"lora_name": BASE, "lora_path": adapters.paths[C]}, 409, "the base model")):
        response = httpx.post(f"{url}{LOAD}", headers=headers, json=body, timeout=60)
        assert response.status_code == status, (body, response.text)
        assert said in response.json()["error"]["message"], response.text
    assert httpx.get(f"{url}/v1/models", headers=headers).json() == before
    # The engine still serves (a refused load is not an engine failure).
    assert httpx.get(f"{url}/readyz").status_code == 200
    assert httpx.post(f"{url}{LOAD}", headers=lora_server.only_a,
                      json={"lora_name": "x", "lora_path": adapters.paths[C]}).status_code == 403


def test_an_adapter_loaded_at_run_time_is_served_after_a_restart(reference: dict[str, list[str]],
                                                                 lora_server: LoraServer, adapters: Adapters) -> None:
    url, headers = lora_server.server.url, lora_server.admin
    loaded = httpx.post(f"{url}{LOAD}", headers=headers, json={"lora_name": C, "lora_path": adapters.paths[C]},
                        timeout=60)
    assert loaded.status_code == 200, loaded.text
    assert one_at_a_time(url, C, headers) == reference[C]
    lora_server.server.stop()
    lora_server.server = lora_server.server.again().start()
    assert C in [c["id"] for c in httpx.get(f"{url}/v1/models", headers=headers).json()["data"]]
    assert one_at_a_time(url, C, headers) == reference[C]
    metrics = httpx.get(f"{url}/metrics").text
    assert f'codeface_model_generations_total{{model="{C}"}} 3.0' in metrics


def test_unload_stops_serving_the_adapter(lora_server: LoraServer, adapters: Adapters) -> None:
    url, headers = lora_server.server.url, lora_server.admin
    name = f"brief-{uuid.uuid4().hex[:6]}"
    assert httpx.post(f"{url}{LOAD}", headers=headers, json={"lora_name": name, "lora_path": adapters.paths[C]},
                      timeout=60).status_code == 200
    assert name in [a["name"] for a in httpx.get(f"{url}/v1/lora_adapters", headers=headers).json()["data"]]
    assert httpx.post(f"{url}/v1/unload_lora_adapter", headers=headers, json={"lora_name": name}).status_code == 200
    response = httpx.post(f"{url}/v1/completions", headers=headers, json={"model": name, "prompt": "Hi",
                                                                          "max_tokens": 2})
    assert response.status_code == 404
