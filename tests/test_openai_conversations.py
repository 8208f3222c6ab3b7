"""OpenAI's Conversations API and stored responses end to end through the official openai SDK (real server, real CPU
engine, Postgres): every verb of conversations and items; a message posted on the chat page's API after function
call items renders with the model's template and is answered; a response saved as the generation side saves it is
retrieved, listed, deleted, and another user's ids are 404."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import httpx
import openai
import pytest

from support.responses_state import a_response, function_call, user_message

ITEMS: list[Any] = [
    {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "What is the weather in Paris?"}]},
    {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
    {"type": "function_call_output", "call_id": "call_1", "output": "sunny, 20 C"},
    {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "It is sunny."}]}]


@pytest.fixture(scope="module")
def tenant(server_database_url: str, redis_url: str) -> tuple[str, uuid.UUID]:
    """A user of its own (its key, and its id for saving responses as the generation side does)."""
    from storage import Database
    from storage.repository import Users

    from conftest import server_settings, user_with_key

    name = f"conversations-{uuid.uuid4().hex[:8]}"
    key = user_with_key(server_settings(server_database_url, redis_url), name)

    async def user_id() -> uuid.UUID:
        database = Database(server_database_url)
        try:
            async with database.session() as session:
                user = await Users(session).by_username(name)
                assert user is not None
                return user.id
        finally:
            await database.close()

    return key, asyncio.run(user_id())


@pytest.fixture(scope="module")
def client(server_url: str, tenant: tuple[str, uuid.UUID]) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server_url}/v1", api_key=tenant[0], max_retries=0, timeout=120)


def test_conversations_and_items_every_verb(client: openai.OpenAI) -> None:
    made = client.conversations.create(items=ITEMS, metadata={"topic": "weather"})
    assert made.id.startswith("conv_") and made.metadata == {"topic": "weather"}
    assert client.conversations.retrieve(made.id).id == made.id
    assert client.conversations.update(made.id, metadata={"topic": "rain"}).metadata == {"topic": "rain"}
    items = client.conversations.items.list(made.id, order="asc").data
    assert [item.type for item in items] == ["message", "function_call", "function_call_output", "message"]
    added = client.conversations.items.create(made.id, items=[{"role": "user", "content": "And in Rome?"}])
    assert added.data[0].role == "user" and added.data[0].content[0].text == "And in Rome?"
    assert client.conversations.items.list(made.id).data[0].id == added.data[0].id
    assert client.conversations.items.retrieve(items[1].id, conversation_id=made.id).call_id == "call_1"
    assert client.conversations.items.delete(added.data[0].id, conversation_id=made.id).id == made.id
    assert len(client.conversations.items.list(made.id).data) == 4
    assert client.conversations.delete(made.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.conversations.retrieve(made.id)


def test_a_page_post_after_function_call_items_is_answered(client: openai.OpenAI, server_url: str,
                                                           tenant: tuple[str, uuid.UUID]) -> None:
    """The items render as the chat template's tool calls and tool messages (the test server's Hermes template)."""
    made = client.conversations.create(items=ITEMS)
    raw_id = uuid.UUID(hex=made.id.removeprefix("conv_"))
    headers = {"Authorization": f"Bearer {tenant[0]}"}
    page = httpx.get(f"{server_url}/api/v1/conversations", headers=headers, timeout=30).json()
    assert str(raw_id) in [c["id"] for c in page["data"]]
    posted = httpx.post(f"{server_url}/api/v1/conversations/{raw_id}/messages", headers=headers, timeout=120,
                        json={"content": "Thanks! Say it in one word.", "max_tokens": 8, "temperature": 0})
    assert posted.status_code == 201, posted.text
    assert posted.json()["message"]["status"] in ("completed", "length") and posted.json()["dropped_turns"] == 0
    items = client.conversations.items.list(made.id, order="asc").data
    assert [item.type for item in items][-2:] == ["message", "message"] and items[-1].role == "assistant"
    assert items[-1].content[0].text == posted.json()["reply"]


def test_stored_responses_retrieve_input_items_and_delete(client: openai.OpenAI, admin_key: str, server_url: str,
                                                          server_database_url: str,
                                                          tenant: tuple[str, uuid.UUID]) -> None:
    """Saved through the store, as POST /v1/responses saves one (that route is built apart)."""
    from server.apis.openai.responses.store import ResponseStore
    from server.conversations.store import ConversationLimits, ConversationStore
    from storage import Database

    response = a_response(function_call("call_1"))

    async def save() -> None:
        database = Database(server_database_url)
        try:
            store = ResponseStore(database, ConversationStore(database, ConversationLimits()),
                                  retention=timedelta(days=1), context_tokens=lambda: 2048)
            await store.save(tenant[1], response, [user_message(f"q{n}") for n in range(3)], store=True,
                             conversation_id=None)
        finally:
            await database.close()

    asyncio.run(save())
    assert client.responses.retrieve(response["id"]).output[0].type == "function_call"
    page = client.responses.input_items.list(response["id"], limit=2)
    assert [item.content[0].text for item in page.data] == ["q2", "q1"] and page.has_more
    stranger = openai.OpenAI(base_url=f"{server_url}/v1", api_key=admin_key, max_retries=0)
    for attempt in (lambda: stranger.responses.retrieve(response["id"]),
                    lambda: stranger.responses.input_items.list(response["id"]),
                    lambda: stranger.responses.delete(response["id"])):
        with pytest.raises(openai.NotFoundError):
            attempt()
    client.responses.delete(response["id"])
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response["id"])
