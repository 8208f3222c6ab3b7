"""The state of OpenAI's Responses API end to end through the official openai SDK (real server, real CPU engine,
Postgres): a stored response retrieved, its input items paged, deleted; a previous_response_id chain whose second
prompt holds the first turn; responses appended to a conversation, seen as items and on the chat page's API;
store=false keeping nothing; and bad requests refused in OpenAI's envelope with nothing stored."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import httpx
import openai
import pytest

from support.openai_envelope import assert_envelope

GREEDY: dict[str, Any] = {"temperature": 0, "max_output_tokens": 8}
RESPONSES = "/v1/responses"


def _user(server_database_url: str, redis_url: str, role: str) -> tuple[str, uuid.UUID]:
    """A user of its own: its API key and its id."""
    from conftest import server_settings, user_with_key

    name = f"responses-{role}-{uuid.uuid4().hex[:8]}"
    key = user_with_key(server_settings(server_database_url, redis_url), name)
    row = _fetch(server_database_url, "SELECT id FROM users WHERE username = $1", name)
    return key, row[0]["id"]


def _fetch(database_url: str, query: str, *args: object) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        connection = await asyncpg.connect(database_url.replace("+asyncpg", ""))
        try:
            return list(await connection.fetch(query, *args))
        finally:
            await connection.close()
    return asyncio.run(run())


@pytest.fixture(scope="module")
def owner(server_database_url: str, redis_url: str) -> tuple[str, uuid.UUID]:
    return _user(server_database_url, redis_url, "owner")


@pytest.fixture(scope="module")
def client(server_url: str, owner: tuple[str, uuid.UUID]) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server_url}/v1", api_key=owner[0], max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def http(server_url: str, owner: tuple[str, uuid.UUID]) -> httpx.Client:
    return httpx.Client(base_url=server_url, headers={"Authorization": f"Bearer {owner[0]}"}, timeout=120)


def test_stored_by_default_retrieved_paged_and_deleted(client: openai.OpenAI, model_name: str) -> None:
    words = ["one", "two", "three"]
    made = client.responses.create(model=model_name, **GREEDY, input=[
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": word}]} for word in words])
    assert made.store is True
    assert client.responses.retrieve(made.id).model_dump() == made.model_dump()
    items = client.responses.input_items.list(made.id, order="asc")
    assert [item.content[0].text for item in items.data] == words and not items.has_more  # type: ignore[union-attr]
    assert all(item.id for item in items.data) and items.first_id == items.data[0].id
    newest = client.responses.input_items.list(made.id, limit=2)  # order desc by default, as OpenAI
    assert [item.content[0].text for item in newest.data] == ["three", "two"] and newest.has_more  # type: ignore
    rest = client.responses.input_items.list(made.id, limit=2, after=newest.data[-1].id)
    assert [item.content[0].text for item in rest.data] == ["one"] and not rest.has_more  # type: ignore
    assert client.responses.delete(made.id) is None
    for gone in (lambda: client.responses.retrieve(made.id), lambda: client.responses.input_items.list(made.id),
                 lambda: client.responses.delete(made.id)):
        with pytest.raises(openai.NotFoundError):
            gone()


def test_a_previous_response_id_chain_prompts_with_the_first_turn(client: openai.OpenAI, model_name: str) -> None:
    first = client.responses.create(model=model_name, input="My favourite fruit is the pineapple.", **GREEDY)
    second = client.responses.create(model=model_name, input="What is my favourite fruit?",
                                     previous_response_id=first.id, **GREEDY)
    assert first.usage is not None and second.usage is not None and second.previous_response_id == first.id
    alone = client.responses.input_tokens.count(model=model_name, input="What is my favourite fruit?")
    # The first turn's input and output come before the second input: the prompt holds all three.
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    assert second.usage.input_tokens > alone.input_tokens + first.usage.output_tokens
    counted = client.responses.input_tokens.count(model=model_name, input="What is my favourite fruit?",
                                                  previous_response_id=first.id)
    assert counted.input_tokens == second.usage.input_tokens


def test_responses_in_a_conversation_are_its_items_and_on_the_chat_page(
        client: openai.OpenAI, http: httpx.Client, model_name: str) -> None:
    conversation = client.conversations.create(metadata={"from": "sdk"})
    replies = [client.responses.create(model=model_name, input=text, conversation=conversation.id, **GREEDY)
               for text in ("Hello there.", "Say goodbye.")]
    assert all(reply.conversation is not None and reply.conversation.id == conversation.id for reply in replies)
    items = client.conversations.items.list(conversation.id, order="asc").data
    texts = [(item.role, item.content[0].text) for item in items]  # type: ignore[union-attr]
    assert texts == [("user", "Hello there."), ("assistant", replies[0].output_text),
                     ("user", "Say goodbye."), ("assistant", replies[1].output_text)]
    # The second response read the first exchange: its prompt is longer than the first one's whole exchange.
    assert replies[0].usage is not None and replies[1].usage is not None
    assert replies[1].usage.input_tokens > replies[0].usage.input_tokens + replies[0].usage.output_tokens
    page = http.get(f"/api/v1/conversations/{uuid.UUID(hex=conversation.id.removeprefix('conv_'))}")
    assert page.status_code == 200, page.text
    assert [(m["role"], m["content"]) for m in page.json()["messages"]] == texts


def test_store_false_keeps_nothing(client: openai.OpenAI, model_name: str, server_database_url: str,
                                   owner: tuple[str, uuid.UUID]) -> None:
    made = client.responses.create(model=model_name, input="Hi", store=False, **GREEDY)
    assert made.store is False and made.output_text
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(made.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=model_name, input="Again", previous_response_id=made.id, **GREEDY)
    assert not _fetch(server_database_url, "SELECT id FROM responses WHERE id = $1", made.id)


def test_bad_requests_are_refused_and_store_nothing(client: openai.OpenAI, http: httpx.Client, model_name: str,
                                                    server_database_url: str, redis_url: str,
                                                    owner: tuple[str, uuid.UUID]) -> None:
    stranger_key, _ = _user(server_database_url, redis_url, "stranger")
    stranger = openai.OpenAI(base_url=client.base_url, api_key=stranger_key, max_retries=0, timeout=120)
    theirs = stranger.responses.create(model=model_name, input="Hi", **GREEDY)
    mine = client.responses.create(model=model_name, input="Hi", **GREEDY)
    conversation = client.conversations.create(items=[{"role": "user", "content": "Kept as it is."}])
    deleted = client.conversations.create()
    client.conversations.delete(deleted.id)

    def stored() -> tuple[int, int, int]:
        return (len(_fetch(server_database_url, "SELECT id FROM responses WHERE owner_id = $1", owner[1])),
                len(_fetch(server_database_url, "SELECT id FROM conversations WHERE owner_id = $1", owner[1])),
                len(client.conversations.items.list(conversation.id).data))

    before = stored()
    for body, status, param in [
            ({"input": [{"type": "no_such_item", "text": "Hi"}]}, 400, "input[0].type"),
            ({"tools": [{"type": "web_search"}]}, 400, "tools[0].type"),
            ({"previous_response_id": theirs.id}, 404, "previous_response_id"),
            ({"previous_response_id": mine.id, "conversation": conversation.id}, 400, None),
            ({"conversation": deleted.id}, 404, "conversation"),
            ({"conversation": conversation.id, "tools": [{"type": "file_search"}]}, 400, "tools[0].type")]:
        for stream in (False, True):
            refused = http.post(RESPONSES, json={"model": model_name, "input": "Hi", **body, "stream": stream,
                                                 **GREEDY})
            error = assert_envelope(refused, status, param)
            assert error["type"] == ("not_found_error" if status == 404 else "invalid_request_error"), error
    assert stored() == before
    assert stranger.responses.retrieve(theirs.id).id == theirs.id  # still theirs, untouched


def test_a_codex_shaped_stateless_turn(client: openai.OpenAI, model_name: str, server_database_url: str) -> None:
    """As Codex CLI sends a turn: streamed, store false, the whole history as input (a developer message, a function
    call and its output), prompt_cache_key set to the session, include reasoning.encrypted_content, tool_choice
    auto; it is answered, echoes the key, and nothing is kept."""
    shell = {"type": "function", "name": "shell", "description": "Runs a command.", "strict": False,
             "parameters": {"type": "object", "properties": {"command": {"type": "array", "items": {"type": "string"}}},
                            "required": ["command"], "additionalProperties": False}}
    history: list[Any] = [
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Work in /tmp."}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "List the files."}]},
        {"type": "function_call", "call_id": "call_ls", "name": "shell", "arguments": '{"command": ["ls"]}'},
        {"type": "function_call_output", "call_id": "call_ls", "output": "notes.txt"}]
    session = str(uuid.uuid4())
    events = list(client.responses.create(
        model=model_name, instructions="You are a coding agent.", input=history, tools=[shell], tool_choice="auto",
        parallel_tool_calls=False, store=False, include=["reasoning.encrypted_content"], prompt_cache_key=session,
        stream=True, temperature=0, max_output_tokens=8))
    assert events[-1].type in ("response.completed", "response.incomplete")
    final = events[-1].response  # type: ignore[union-attr]
    assert final.output and final.store is False and final.prompt_cache_key == session
    assert not _fetch(server_database_url, "SELECT id FROM responses WHERE id = $1", final.id)
