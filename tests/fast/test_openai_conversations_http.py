"""OpenAI's Conversations API and stored-response routes over the ASGI transport, through the official openai SDK:
every verb, one store with the chat page (the page lists the conversation, a page post is an item of it), another
user's ids as 404, malformed ids as 404, and what is refused with a 400 naming it."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from fast.fake_engine import FakeEngine
from support.responses_state import a_response, function_call, user_message

ITEMS = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "weather in Paris?"}]},
         {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
         {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}]


def sdk(http: httpx.AsyncClient, headers: dict[str, str] | None = None) -> openai.AsyncOpenAI:
    key = (headers or {}).get("Authorization", "Bearer none").removeprefix("Bearer ")
    return openai.AsyncOpenAI(base_url=str(http.base_url.join("/v1")), api_key=key, http_client=http, max_retries=0)


async def test_every_verb_of_conversations_and_items(client: httpx.AsyncClient) -> None:
    api = sdk(client)
    made = await api.conversations.create(items=ITEMS, metadata={"topic": "weather"})
    assert made.id.startswith("conv_") and made.object == "conversation" and made.metadata == {"topic": "weather"}
    assert (await api.conversations.retrieve(made.id)).created_at == made.created_at
    updated = await api.conversations.update(made.id, metadata={"topic": "rain", "n": "2"})
    assert updated.metadata == {"topic": "rain", "n": "2"}
    listed = await api.conversations.items.list(made.id, order="asc")
    assert [item.type for item in listed.data] == ["message", "function_call", "function_call_output"]
    call = listed.data[1]
    assert call.id.startswith("fc_") and call.call_id == "call_1" and call.arguments == '{"city": "Paris"}'
    added = await api.conversations.items.create(made.id, items=[
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "It is sunny."}]}])
    assert added.object == "list" and added.data[0].content[0].text == "It is sunny."
    newest = await api.conversations.items.list(made.id, limit=2)
    assert [item.id for item in newest.data] == [added.data[0].id, listed.data[2].id] and newest.has_more
    everything = [item.id async for item in api.conversations.items.list(made.id, limit=1)]
    assert everything == [added.data[0].id, *[item.id for item in reversed(listed.data)]]
    assert (await api.conversations.items.retrieve(call.id, conversation_id=made.id)).name == "get_weather"
    after_delete = await api.conversations.items.delete(call.id, conversation_id=made.id)
    assert after_delete.id == made.id
    with pytest.raises(openai.NotFoundError):
        await api.conversations.items.retrieve(call.id, conversation_id=made.id)
    deleted = await api.conversations.delete(made.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (made.id, "conversation.deleted", True)
    with pytest.raises(openai.NotFoundError):
        await api.conversations.retrieve(made.id)


async def test_one_store_with_the_chat_page(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    api = sdk(client)
    made = await api.conversations.create(items=ITEMS)
    raw_id = str(uuid.UUID(hex=made.id.removeprefix("conv_")))
    page = (await client.get("/api/v1/conversations")).json()
    assert [(c["id"], c["title"]) for c in page["data"]] == [(raw_id, "weather in Paris?")]
    posted = await client.post(f"/api/v1/conversations/{raw_id}/messages", json={"content": "and tomorrow?",
                                                                                  "max_tokens": 2})
    assert posted.status_code == 201, posted.text
    prompt = engine.prepared[-1][0].text
    assert prompt.index("<tool>sunny") < prompt.index("<user>and tomorrow?")
    items = (await api.conversations.items.list(made.id, order="asc")).data
    assert [(item.type, getattr(item, "role", None)) for item in items][-2:] == [("message", "user"),
                                                                                 ("message", "assistant")]
    assert items[-2].id == f"msg_{uuid.UUID(posted.json()['user_message']['id']).hex}"


async def test_stored_responses_retrieve_delete_and_input_items(client: httpx.AsyncClient) -> None:
    """The POST route is the generation side's: the response is saved as it saves one."""
    from storage.repository import Users

    services = client._transport.app.state.services  # type: ignore[attr-defined]
    async with services.database.session() as session:
        local = await Users(session).get_or_create("local")  # the one user while auth is off
        await session.commit()
    response = a_response(function_call("call_1"))
    await services.response_store.save(local.id, response, [user_message(str(n)) for n in range(3)], store=True,
                                       conversation_id=None)
    api = sdk(client)
    got = await api.responses.retrieve(response["id"])
    assert got.id == response["id"] and got.output[0].type == "function_call"
    page = await api.responses.input_items.list(response["id"], limit=2, order="asc")
    assert [item.content[0].text for item in page.data] == ["0", "1"] and page.has_more
    newest_first = [item.content[0].text async for item in api.responses.input_items.list(response["id"], limit=1)]
    assert newest_first == ["2", "1", "0"]
    await api.responses.delete(response["id"])
    with pytest.raises(openai.NotFoundError):
        await api.responses.retrieve(response["id"])
    with pytest.raises(openai.NotFoundError):
        await api.responses.delete(response["id"])


# Fixed ids (xdist's workers must collect the same parameters): none names anything.
UNKNOWN_HEX = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize("path", [
    "/v1/conversations/conv_123", "/v1/conversations/123", f"/v1/conversations/{uuid.UUID(hex=UNKNOWN_HEX)}",
    f"/v1/conversations/conv_{UNKNOWN_HEX}/items", f"/v1/conversations/conv_{UNKNOWN_HEX}/items/msg_1",
    "/v1/responses/resp_1", f"/v1/responses/resp_{UNKNOWN_HEX}", f"/v1/responses/{UNKNOWN_HEX}/input_items",
])
async def test_malformed_and_unknown_ids_are_404_in_openais_envelope(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 404, response.text
    assert response.json()["error"]["type"] == "not_found_error"


async def test_another_users_conversation_and_response_do_not_exist(auth_client: Callable[..., Any]) -> None:
    from fast.conftest import UNLIMITED

    http, headers = await auth_client(FakeEngine(), {"alice": UNLIMITED, "mallory": UNLIMITED})
    async with http:
        alice, mallory = sdk(http, headers["alice"]), sdk(http, headers["mallory"])
        made = await alice.conversations.create(items=ITEMS[:1])
        item = (await alice.conversations.items.list(made.id)).data[0]
        for attempt in (lambda: mallory.conversations.retrieve(made.id),
                        lambda: mallory.conversations.update(made.id, metadata={}),
                        lambda: mallory.conversations.delete(made.id),
                        lambda: mallory.conversations.items.list(made.id),
                        lambda: mallory.conversations.items.create(made.id, items=ITEMS[:1]),
                        lambda: mallory.conversations.items.retrieve(item.id, conversation_id=made.id),
                        lambda: mallory.conversations.items.delete(item.id, conversation_id=made.id)):
            with pytest.raises(openai.NotFoundError):
                await attempt()
        assert len((await alice.conversations.items.list(made.id)).data) == 1


@pytest.mark.parametrize(("method", "path", "body", "param"), [
    ("POST", "/v1/conversations", {"metadata": {f"k{n}": "v" for n in range(17)}}, "metadata"),
    ("POST", "/v1/conversations", {"metadata": {"k": "v" * 513}}, "metadata[...]"),
    ("POST", "/v1/conversations", {"items": ITEMS * 7}, "items"),
    ("POST", "/v1/conversations", {"items": [{"type": "web_search_call"}]}, "items[0].type"),
    ("POST", "/v1/conversations", {"safety_identifier": "u1"}, "safety_identifier"),
    ("GET", "/v1/conversations/{id}/items?include=message.output_text.logprobs", None, "include"),
    ("GET", "/v1/conversations/{id}/items?order=sideways", None, "order"),
    ("GET", "/v1/conversations/{id}/items?limit=101", None, "limit"),
    ("GET", "/v1/conversations/{id}/items?after=msg_x", None, "after"),
    ("POST", "/v1/conversations/{id}/items", {"items": []}, "items"),
    ("POST", "/v1/conversations/{id}", {}, "metadata"),
])
async def test_bad_input_is_a_400_naming_the_field(client: httpx.AsyncClient, method: str, path: str,
                                                   body: dict[str, Any] | None, param: str) -> None:
    made = (await client.post("/v1/conversations", json={})).json()
    response = await client.request(method, path.format(id=made["id"]), json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param, response.text
