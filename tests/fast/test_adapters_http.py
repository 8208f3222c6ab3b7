"""LoRA adapters over the ASGI transport with FakeEngine (its adapters say their name before each word): every
dialect's `model` selects the adapter, /v1/models lists them with their parent, the admin routes load, unload and
list them (recorded: another app on the same database serves them after its start), a refused load changes nothing,
and a caller limited to some models gets 404 for the others, as if they did not exist."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from fast.conftest import PROFILE, make_app, started, users_with_keys
from fast.fake_engine import FAKE_BAD_ADAPTER, FAKE_MODEL, FakeEngine

CHAT = "/v1/chat/completions"
LOAD = "/v1/load_lora_adapter"
UNLOAD = "/v1/unload_lora_adapter"
ADAPTERS = "/v1/lora_adapters"
HELLO = [{"role": "user", "content": "Hi"}]


async def chat_text(client: httpx.AsyncClient, model: str | None, **extra: Any) -> httpx.Response:
    body: dict[str, Any] = {"messages": HELLO, "max_tokens": 2, "ignore_eos": True, **extra}
    if model is not None:
        body["model"] = model
    return await client.post(CHAT, json=body)


async def test_every_dialect_selects_the_adapter_its_model_names(lora_app: Callable[..., Starlette]) -> None:
    async with await started(lora_app(FakeEngine())) as client:
        base = (await chat_text(client, FAKE_MODEL)).json()
        alpha = (await chat_text(client, "alpha")).json()
        assert base["choices"][0]["message"]["content"] == "w0 w1 " and base["model"] == FAKE_MODEL
        assert alpha["choices"][0]["message"]["content"] == "alpha:w0 alpha:w1 " and alpha["model"] == "alpha"
        completion = (await client.post("/v1/completions", json={"model": "beta", "prompt": "Hi", "max_tokens": 2,
                                                                 "ignore_eos": True})).json()
        assert completion["choices"][0]["text"] == "beta:w0 beta:w1 " and completion["model"] == "beta"
        response = (await client.post("/v1/responses", json={"model": "alpha", "input": "Hi",
                                                              "max_output_tokens": 2})).json()
        assert response["model"] == "alpha" and response["output"][0]["content"][0]["text"].startswith("alpha:w0")
        message = (await client.post("/v1/messages", json={"model": "beta", "max_tokens": 2,
                                                           "messages": HELLO})).json()
        assert message["model"] == "beta" and message["content"][0]["text"].startswith("beta:w0")
        conversation = (await client.post("/api/v1/conversations", json={})).json()["id"]
        reply = await client.post(f"/api/v1/conversations/{conversation}/messages",
                                  json={"content": "Hi", "max_tokens": 2, "model": "alpha"})
        assert reply.status_code == 201, reply.text
        assert reply.json()["message"]["content"].startswith("alpha:w0")
        streamed = await chat_text(client, "beta", stream=True)
        assert "beta:w0" in streamed.text and '"model":"beta"' in streamed.text.replace(" ", "")


async def test_models_lists_the_adapters_with_their_parent(lora_app: Callable[..., Starlette]) -> None:
    async with await started(lora_app(FakeEngine())) as client:
        cards = (await client.get("/v1/models")).json()["data"]
    assert [(c["id"], c["parent"], c["root"]) for c in cards] == [
        (FAKE_MODEL, None, "/fake"), ("alpha", FAKE_MODEL, PROFILE["alpha"]), ("beta", FAKE_MODEL, PROFILE["beta"])]


async def test_an_unknown_model_is_404_on_every_dialect(lora_app: Callable[..., Starlette]) -> None:
    async with await started(lora_app(FakeEngine())) as client:
        for path, body in ((CHAT, {"messages": HELLO}), ("/v1/completions", {"prompt": "Hi"}),
                           ("/v1/responses", {"input": "Hi"}), ("/v1/messages", {"messages": HELLO, "max_tokens": 2}),
                           ("/tokenize", {"prompt": "Hi"})):
            response = await client.post(path, json={**body, "model": "gamma"})
            assert response.status_code == 404, (path, response.text)
        conversation = (await client.post("/api/v1/conversations", json={})).json()["id"]
        reply = await client.post(f"/api/v1/conversations/{conversation}/messages",
                                  json={"content": "Hi", "model": "gamma"})
        assert reply.status_code == 404
        # Refused before anything was stored.
        assert (await client.get(f"/api/v1/conversations/{conversation}")).json()["messages"] == []


async def test_load_serve_list_and_unload_at_run_time(lora_app: Callable[..., Starlette]) -> None:
    engine = FakeEngine()
    async with await started(lora_app(engine)) as client:
        loaded = await client.post(LOAD, json={"lora_name": "gamma", "lora_path": "/adapters/gamma"})
        assert loaded.status_code == 200, loaded.text
        assert loaded.json() == {"name": "gamma", "path": "/adapters/gamma", "parent": FAKE_MODEL,
                                 "source": "runtime"}
        assert (await chat_text(client, "gamma")).json()["choices"][0]["message"]["content"].startswith("gamma:")
        listed = (await client.get(ADAPTERS)).json()["data"]
        assert [(a["name"], a["source"]) for a in listed] == [("alpha", "profile"), ("beta", "profile"),
                                                              ("gamma", "runtime")]
        assert (await client.post(UNLOAD, json={"lora_name": "gamma"})).status_code == 200
        assert "gamma" not in engine.adapters
        assert (await chat_text(client, "gamma")).status_code == 404
        assert (await client.post(UNLOAD, json={"lora_name": "gamma"})).status_code == 404
        # The profile's adapters are changed in the profile.
        assert (await client.post(UNLOAD, json={"lora_name": "alpha"})).status_code == 400


async def test_a_refused_load_is_4xx_and_changes_nothing(lora_app: Callable[..., Starlette]) -> None:
    engine = FakeEngine()
    async with await started(lora_app(engine)) as client:
        before = (await client.get("/v1/models")).json()
        for body, status, param in (
                ({"lora_name": "delta", "lora_path": f"/adapters/{FAKE_BAD_ADAPTER}-delta"}, 400, "lora_path"),
                ({"lora_name": "delta", "lora_path": "adapters/delta"}, 400, "lora_path"),
                ({"lora_name": FAKE_MODEL, "lora_path": "/adapters/delta"}, 409, "lora_name"),
                ({"lora_name": "alpha", "lora_path": "/adapters/delta"}, 409, "lora_name"),
                ({"lora_name": "", "lora_path": "/adapters/delta"}, 400, "lora_name"),
                ({"lora_name": "delta"}, 400, None)):
            response = await client.post(LOAD, json=body)
            assert response.status_code == status, (body, response.text)
            if param is not None:
                assert response.json()["error"]["param"] == param
        assert (await client.get("/v1/models")).json() == before
        assert sorted(engine.adapters) == ["alpha", "beta"]
        assert [a["name"] for a in (await client.get(ADAPTERS)).json()["data"]] == ["alpha", "beta"]


async def test_the_engine_reason_is_in_the_refusal(lora_app: Callable[..., Starlette]) -> None:
    async with await started(lora_app(FakeEngine())) as client:
        response = await client.post(LOAD, json={"lora_name": "delta", "lora_path": f"/x/{FAKE_BAD_ADAPTER}"})
    assert "No adapter found for /x/bad" in response.json()["error"]["message"]


async def test_another_app_on_the_database_serves_what_was_loaded(migrated_database: Path, tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    shutil.copyfile(migrated_database, path)
    url = f"sqlite+aiosqlite:///{path}"
    first = make_app(migrated_database, tmp_path, FakeEngine(), enable_lora=True, database_url=url)
    async with await started(first) as client:
        assert (await client.post(LOAD, json={"lora_name": "gamma", "lora_path": "/adapters/gamma"})).status_code == 200
    second_engine = FakeEngine()
    second = make_app(migrated_database, tmp_path, second_engine, enable_lora=True, database_url=url)
    async with await started(second) as client:
        assert "gamma" in second_engine.adapters
        assert [c["id"] for c in (await client.get("/v1/models")).json()["data"]] == [FAKE_MODEL, "gamma"]
        assert (await chat_text(client, "gamma")).json()["model"] == "gamma"
        assert (await client.post(UNLOAD, json={"lora_name": "gamma"})).status_code == 200
    third = make_app(migrated_database, tmp_path, FakeEngine(), enable_lora=True, database_url=url)
    async with await started(third) as client:
        assert [c["id"] for c in (await client.get("/v1/models")).json()["data"]] == [FAKE_MODEL]


async def test_a_running_app_follows_loads_and_unloads_made_elsewhere(migrated_database: Path,
                                                                      tmp_path: Path) -> None:
    path = tmp_path / "synced.db"
    shutil.copyfile(migrated_database, path)
    url = f"sqlite+aiosqlite:///{path}"
    first = make_app(migrated_database, tmp_path, FakeEngine(), enable_lora=True, database_url=url)
    second = make_app(migrated_database, tmp_path, FakeEngine(), enable_lora=True, database_url=url)
    async with await started(first) as one, await started(second) as other:
        assert (await one.post(LOAD, json={"lora_name": "gamma", "lora_path": "/adapters/gamma"})).status_code == 200
        assert (await chat_text(other, "gamma")).status_code == 404
        await second.state.services.adapters.sync()  # what its lifecycle runs every adapter_sync_s
        assert (await chat_text(other, "gamma")).json()["model"] == "gamma"
        assert (await one.post(UNLOAD, json={"lora_name": "gamma"})).status_code == 200
        await second.state.services.adapters.sync()
        assert (await chat_text(other, "gamma")).status_code == 404
        # A recorded adapter that does not load here is left out, and the others still served.
        assert (await one.post(LOAD, json={"lora_name": "delta", "lora_path": "/adapters/delta"})).status_code == 200
        second.state.services.engine.lora_enabled = False
        await second.state.services.adapters.sync()
        assert (await chat_text(other, "delta")).status_code == 404
        assert (await chat_text(one, "delta")).status_code == 200


async def test_lora_off_refuses_loads_and_profile_adapters(migrated_database: Path, tmp_path: Path) -> None:
    engine = FakeEngine()
    engine.lora_enabled = False
    app = make_app(migrated_database, tmp_path, engine)
    async with await started(app) as client:
        response = await client.post(LOAD, json={"lora_name": "gamma", "lora_path": "/adapters/gamma"})
    assert response.status_code == 400 and "enable_lora" in response.json()["error"]["message"]
    assert app.state.services.lifecycle.adapter_sync_s == 0  # nothing to follow: no database round every 5 s
    with pytest.raises(ValueError, match="enable_lora"):
        make_app(migrated_database, tmp_path, FakeEngine(), lora_adapters=PROFILE)


async def test_a_caller_limited_to_some_models_gets_404_for_the_others(migrated_database: Path,
                                                                       tmp_path: Path) -> None:
    url, headers = await users_with_keys(migrated_database, tmp_path, {
        "root": (True, None, None),
        "tenant_a": (False, None, ["alpha"]),
        "team_b": (False, ["beta", FAKE_MODEL], None),
        "narrowed": (False, ["beta", FAKE_MODEL], ["beta", "alpha"]),
    })
    app = make_app(migrated_database, tmp_path, FakeEngine(), enable_lora=True, lora_adapters=PROFILE,
                   auth_enabled=True, database_url=url)
    async with await started(app) as client:
        def models(who: str) -> Any:
            return client.get("/v1/models", headers=headers[who])

        assert [c["id"] for c in (await models("root")).json()["data"]] == [FAKE_MODEL, "alpha", "beta"]
        assert [c["id"] for c in (await models("tenant_a")).json()["data"]] == ["alpha"]
        assert [c["id"] for c in (await models("team_b")).json()["data"]] == [FAKE_MODEL, "beta"]
        # A key's models are within its user's.
        assert [c["id"] for c in (await models("narrowed")).json()["data"]] == ["beta"]
        ok = await client.post(CHAT, headers=headers["tenant_a"], json={"model": "alpha", "messages": HELLO})
        assert ok.status_code == 200
        hidden = await client.post(CHAT, headers=headers["tenant_a"], json={"model": "beta", "messages": HELLO})
        absent = await client.post(CHAT, headers=headers["tenant_a"], json={"model": "nope", "messages": HELLO})
        assert hidden.status_code == absent.status_code == 404
        # The same answer as for a model that does not exist, but for the name: no enumeration.
        assert hidden.json()["error"]["message"].replace("beta", "nope") == absent.json()["error"]["message"]
        base = await client.post(CHAT, headers=headers["tenant_a"], json={"messages": HELLO})
        assert base.status_code == 404
        refused = await client.post("/v1/messages", headers=headers["team_b"],
                                    json={"model": "alpha", "max_tokens": 2, "messages": HELLO})
        assert refused.status_code == 404
        # Only an admin changes adapters, or sees their list.
        assert (await client.post(LOAD, headers=headers["team_b"],
                                  json={"lora_name": "x", "lora_path": "/adapters/x"})).status_code == 403
        assert (await client.get(ADAPTERS, headers=headers["team_b"])).status_code == 403
        assert (await client.get(ADAPTERS, headers=headers["root"])).status_code == 200


async def test_only_an_admin_sets_a_keys_models(migrated_database: Path, tmp_path: Path) -> None:
    url, _ = await users_with_keys(migrated_database, tmp_path, {"someone": (False, None, None)})
    app = make_app(migrated_database, tmp_path, FakeEngine(), auth_enabled=True, database_url=url)
    async with await started(app) as client:
        token = (await client.post("/api/v1/auth/token", data={"username": "someone",
                                                              "password": "someone-password-1"})).json()
        bearer = {"Authorization": f"Bearer {token['access_token']}"}
        response = await client.post("/api/v1/keys", headers=bearer, json={"models": [FAKE_MODEL]})
        plain = await client.post("/api/v1/keys", headers=bearer, json={})
    assert response.status_code == 403 and plain.status_code == 201 and plain.json()["models"] is None


def test_the_adapter_is_on_the_request_span() -> None:
    from opentelemetry.sdk.trace import TracerProvider

    from server.telemetry.tracing import LORA_ADAPTER_ATTRIBUTE, GenerationSpans

    with TracerProvider().get_tracer("test").start_as_current_span("request") as span:
        GenerationSpans("alpha", "id-1", 4, adapter="alpha")
    with TracerProvider().get_tracer("test").start_as_current_span("request") as base_span:
        GenerationSpans(FAKE_MODEL, "id-2", 4)
    assert span.attributes is not None and base_span.attributes is not None
    assert span.attributes["gen_ai.request.model"] == "alpha" and span.attributes[LORA_ADAPTER_ATTRIBUTE] == "alpha"
    assert LORA_ADAPTER_ATTRIBUTE not in base_span.attributes


async def test_per_model_metrics(lora_app: Callable[..., Starlette]) -> None:
    from server.telemetry.metrics import model_generation_tokens, model_generations, model_ttft

    before = model_generations.labels("alpha")._value.get()
    tokens_before = model_generation_tokens.labels("alpha")._value.get()
    async with await started(lora_app(FakeEngine())) as client:
        await chat_text(client, "alpha")
        await chat_text(client, "alpha")
        await chat_text(client, FAKE_MODEL)
        text = (await client.get("/metrics")).text
    assert model_generations.labels("alpha")._value.get() == before + 2
    assert model_generation_tokens.labels("alpha")._value.get() == tokens_before + 4
    assert 'codeface_model_time_to_first_token_seconds_count{model="alpha"}' in text
    assert model_ttft.labels("alpha")._sum.get() > 0
