"""A conversation pinned to a model, over the ASGI transport with FakeEngine (its adapters say their name before
each word): the pin is stored and shown, a message without `model` is answered by the pinned model, one naming
another model is a 409 that stores nothing, PATCH pins, repins and unpins, and a pin the caller may not use (or no
longer may: the adapter unloaded, a narrower key) is the model route's 404. OpenAI's dialects keep their shapes."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette

from fast.conftest import PROFILE, SECRET, make_app, started, users_with_keys
from fast.fake_engine import FAKE_MODEL, FakeEngine

API = "/api/v1/conversations"
LOAD = "/v1/load_lora_adapter"
UNLOAD = "/v1/unload_lora_adapter"


async def create(client: httpx.AsyncClient, headers: dict[str, str] | None = None, **body: Any) -> httpx.Response:
    return await client.post(API, json=body, headers=headers)


async def post(client: httpx.AsyncClient, conversation_id: str, headers: dict[str, str] | None = None,
               **extra: Any) -> httpx.Response:
    return await client.post(f"{API}/{conversation_id}/messages", headers=headers,
                             json={"content": "Hi", "max_tokens": 2, "ignore_eos": True, **extra})


async def stored(client: httpx.AsyncClient, conversation_id: str, headers: dict[str, str] | None = None) -> Any:
    response = await client.get(f"{API}/{conversation_id}", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


async def test_a_pinned_conversation_replies_with_its_model(lora_app: Callable[..., Starlette]) -> None:
    async with await started(lora_app(FakeEngine())) as client:
        made = await create(client, model="alpha")
        assert made.status_code == 201, made.text
        pinned = made.json()["id"]
        assert made.json()["model"] == "alpha" and (await stored(client, pinned))["model"] == "alpha"
        assert [c["model"] for c in (await client.get(API)).json()["data"]] == ["alpha"]
        # No model: the pin; the pinned model by name: the same.
        assert (await post(client, pinned)).json()["reply"] == "alpha:w0 alpha:w1 "
        assert (await post(client, pinned, model="alpha")).json()["reply"] == "alpha:w0 alpha:w1 "
        for other in ("beta", FAKE_MODEL, "no-such-model"):
            refused = await post(client, pinned, model=other)
            assert refused.status_code == 409, refused.text
            error = refused.json()["error"]
            assert error["param"] == "model" and "pinned to the model 'alpha'" in error["message"]
        # Refused before anything was stored: the two replies above, nothing more.
        assert len((await stored(client, pinned))["messages"]) == 4
        unpinned = (await create(client)).json()
        assert unpinned["model"] is None
        assert (await post(client, unpinned["id"])).json()["reply"] == "w0 w1 "
        assert (await post(client, unpinned["id"], model="beta")).json()["reply"] == "beta:w0 beta:w1 "
        base = (await create(client, model=FAKE_MODEL)).json()["id"]
        assert (await post(client, base)).json()["reply"] == "w0 w1 "
        assert (await post(client, base, model="alpha")).status_code == 409


async def test_patch_pins_repins_and_unpins(lora_app: Callable[..., Starlette]) -> None:
    async with await started(lora_app(FakeEngine())) as client:
        conversation_id = (await create(client, title="t")).json()["id"]
        url = f"{API}/{conversation_id}"
        pinned = await client.patch(url, json={"model": "beta"})
        assert pinned.status_code == 200 and pinned.json()["model"] == "beta" and pinned.json()["title"] == "t"
        assert (await post(client, conversation_id)).json()["reply"] == "beta:w0 beta:w1 "
        # A title alone keeps the pin.
        renamed = await client.patch(url, json={"title": "renamed"})
        assert renamed.json()["model"] == "beta" and renamed.json()["title"] == "renamed"
        assert (await client.patch(url, json={"model": "alpha"})).json()["model"] == "alpha"
        assert (await post(client, conversation_id)).json()["reply"] == "alpha:w0 alpha:w1 "
        unpinned = await client.patch(url, json={"model": None})
        assert unpinned.status_code == 200 and unpinned.json()["model"] is None
        assert (await post(client, conversation_id)).json()["reply"] == "w0 w1 "
        assert (await post(client, conversation_id, model="beta")).json()["reply"] == "beta:w0 beta:w1 "
        for body, param in (({}, None), ({"model": 3}, "model"), ({"model": "x" * 201}, "model"),
                            ({"pinned": "alpha"}, "pinned")):
            refused = await client.patch(url, json=body)
            assert refused.status_code == 400 and refused.json()["error"]["param"] == param, (body, refused.text)
        refused = await create(client, model="x" * 201)
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "model"


async def test_pinning_a_model_that_does_not_exist_is_404(lora_app: Callable[..., Starlette]) -> None:
    async with await started(lora_app(FakeEngine())) as client:
        absent = await create(client, model="gamma")
        assert absent.status_code == 404 and absent.json()["error"]["param"] == "model"
        # Its message is the model routes' own.
        per_message = await client.post("/v1/chat/completions", json={
            "model": "gamma", "messages": [{"role": "user", "content": "Hi"}]})
        assert absent.json()["error"]["message"] == per_message.json()["error"]["message"]
        assert (await client.get(API)).json()["data"] == []
        conversation_id = (await create(client, model="alpha")).json()["id"]
        repinned = await client.patch(f"{API}/{conversation_id}", json={"model": "gamma", "title": "kept?"})
        assert repinned.status_code == 404 and repinned.json()["error"]["param"] == "model"
        after = await stored(client, conversation_id)
        assert (after["model"], after["title"]) == ("alpha", "")
        # Another user's conversation (here: none with this id) is the usual 404, whatever the model.
        missing = await client.patch(f"{API}/{uuid.uuid4()}", json={"model": "alpha"})
        assert missing.status_code == 404 and missing.json()["error"]["param"] == "conversation_id"


async def test_an_unloaded_pinned_adapter_answers_as_the_per_message_path(
        lora_app: Callable[..., Starlette]) -> None:
    async with await started(lora_app(FakeEngine())) as client:
        assert (await client.post(LOAD, json={"lora_name": "gamma", "lora_path": "/adapters/gamma"})).status_code == 200
        pinned = (await create(client, model="gamma")).json()["id"]
        unpinned = (await create(client)).json()["id"]
        assert (await post(client, pinned)).json()["reply"] == "gamma:w0 gamma:w1 "
        assert (await client.post(UNLOAD, json={"lora_name": "gamma"})).status_code == 200
        gone = await post(client, pinned)
        per_message = await post(client, unpinned, model="gamma")
        assert gone.status_code == per_message.status_code == 404
        said = [(r.json()["error"]["message"], r.json()["error"]["param"]) for r in (gone, per_message)]
        assert said[0] == said[1] and said[0][1] == "model"
        assert len((await stored(client, pinned))["messages"]) == 2
        # Unpinned, it is served again by the base model.
        await client.patch(f"{API}/{pinned}", json={"model": None})
        assert (await post(client, pinned)).json()["reply"] == "w0 w1 "


async def test_pins_follow_the_callers_models(migrated_database: Path, tmp_path: Path) -> None:
    from server import admin
    from server.settings import load_settings

    url, headers = await users_with_keys(migrated_database, tmp_path, {
        "tenant_a": (False, None, ["alpha"]), "team": (False, None, None)})
    # A second key of the team's user, narrowed to beta: the same conversations, fewer models.
    narrow_key = await admin.create_key(load_settings(None, database_url=url, secret_key=SECRET), "team", "narrow",
                                        None, {}, ["beta"])
    narrow = {"Authorization": f"Bearer {narrow_key}"}
    app = make_app(migrated_database, tmp_path, FakeEngine(), enable_lora=True, lora_adapters=PROFILE,
                   auth_enabled=True, database_url=url)
    async with await started(app) as client:
        hidden = await create(client, headers["tenant_a"], model="beta")
        absent = await create(client, headers["tenant_a"], model="nope")
        assert hidden.status_code == absent.status_code == 404
        # No enumeration: the same answer as for a model that does not exist, but for the name.
        assert hidden.json()["error"]["message"].replace("beta", "nope") == absent.json()["error"]["message"]
        assert (await create(client, headers["tenant_a"], model=FAKE_MODEL)).status_code == 404
        mine = (await create(client, headers["tenant_a"], model="alpha")).json()["id"]
        assert (await post(client, mine, headers["tenant_a"])).json()["reply"] == "alpha:w0 alpha:w1 "
        patched = await client.patch(f"{API}/{mine}", headers=headers["tenant_a"], json={"model": "beta"})
        assert patched.status_code == 404 and patched.json()["error"]["param"] == "model"
        team = (await create(client, headers["team"], model="alpha")).json()["id"]
        assert (await post(client, team, headers["team"])).status_code == 201
        lost = await post(client, team, narrow)
        per_message = await post(client, (await create(client, narrow)).json()["id"], narrow, model="alpha")
        assert lost.status_code == per_message.status_code == 404
        assert lost.json()["error"]["message"] == per_message.json()["error"]["message"]
        assert len((await stored(client, team, narrow))["messages"]) == 2


async def test_openai_dialects_keep_their_shapes(lora_app: Callable[..., Starlette]) -> None:
    """OpenAI's Conversation object has no model (a Response names its own): a pinned conversation shows none
    there, and a response in it is generated with the model the response names."""
    async with await started(lora_app(FakeEngine())) as client:
        pinned = (await create(client, model="alpha")).json()["id"]
        openai_id = f"conv_{uuid.UUID(pinned).hex}"
        shown = (await client.get(f"/v1/conversations/{openai_id}")).json()
        assert "model" not in shown and shown["id"] == openai_id
        response = await client.post("/v1/responses", json={"model": "beta", "input": "Hi", "max_output_tokens": 2,
                                                             "conversation": openai_id})
        assert response.status_code == 200, response.text
        assert response.json()["model"] == "beta"
        made = (await client.post("/v1/conversations", json={})).json()
        assert "model" not in made
        assert (await stored(client, str(uuid.UUID(made["id"].removeprefix("conv_")))))["model"] is None
