"""The Responses API's state on SQLite (the same code runs on Postgres): what save keeps and context reads back, for
previous_response_id chains and conversations, scoped by owner; retrieval, delete, input_items pages and the
retention sweep."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from server.apis.openai.responses import store as store_module
from server.apis.openai.responses.ids import conversation_wire_id
from server.apis.openai.responses.store import ResponseStore
from server.conversations.store import ConversationLimits, ConversationStore
from server.exceptions import ConversationBusy, ConversationFull, InvalidRequest, NotFound
from storage import Database
from storage.models import MessageRole, MessageStatus
from storage.repository import Conversations, Messages, Users

from support.responses_state import (
    a_response,
    assistant_message,
    function_call,
    function_output,
    user_message,
)

StoreFor = Callable[..., ResponseStore]


@pytest.fixture
async def database(migrated_database: Path, tmp_path: Path) -> AsyncIterator[Database]:
    path = tmp_path / "responses.db"
    shutil.copyfile(migrated_database, path)
    db = Database(f"sqlite+aiosqlite:///{path}")
    yield db
    await db.close()


@pytest.fixture
def store_for(database: Database) -> StoreFor:
    def make(retention: timedelta = timedelta(days=30), **limits: int) -> ResponseStore:
        conversations = ConversationStore(database, ConversationLimits(**limits))
        return ResponseStore(database, conversations, retention=retention, context_tokens=lambda: 4096)
    return make


@pytest.fixture
def store(store_for: StoreFor) -> ResponseStore:
    return store_for()


async def new_user(database: Database) -> uuid.UUID:
    async with database.session() as session:
        user = await Users(session).create(f"user-{uuid.uuid4().hex[:8]}")
        await session.commit()
        return user.id


async def new_conversation(database: Database, owner: uuid.UUID) -> uuid.UUID:
    async with database.session() as session:
        conversation = await Conversations(session).create(owner)
        await session.commit()
        return conversation.id


def texts(items: list[dict[str, Any]]) -> list[str]:
    """Each item in short: a message's text, a call's name, an output's output."""
    def one(item: dict[str, Any]) -> str:
        if item["type"] == "message":
            return "".join(part["text"] for part in item["content"])
        return item.get("name") or item["output"]
    return [one(item) for item in items]


async def test_a_chain_reads_each_response_input_then_output_oldest_first(database: Database,
                                                                         store: ResponseStore) -> None:
    owner = await new_user(database)
    first = a_response(function_call("call_1"))
    await store.save(owner, first, [user_message("weather?")], store=True, conversation_id=None)
    second = a_response(assistant_message("it is sunny"), previous=first["id"])
    await store.save(owner, second, [function_output("call_1")], store=True, conversation_id=None)
    third = a_response(assistant_message("bye"), previous=second["id"])
    await store.save(owner, third, [user_message("thanks")], store=True, conversation_id=None)
    items = await store.context(owner, previous_response_id=third["id"], conversation_id=None)
    assert texts(items) == ["weather?", "get_weather", "sunny", "it is sunny", "thanks", "bye"]
    # Input items got ids of the kind's prefix; outputs keep theirs.
    assert items[0]["id"].startswith("msg_") and items[2]["id"].startswith("fco_")
    assert items[1]["id"] == first["output"][0]["id"]
    assert await store.get(owner, third["id"]) == third


async def test_another_owners_or_a_malformed_id_is_not_found(database: Database, store: ResponseStore) -> None:
    owner, stranger = await new_user(database), await new_user(database)
    response = a_response()
    await store.save(owner, response, [user_message("mine")], store=True, conversation_id=None)
    for ask in (lambda: store.get(stranger, response["id"]), lambda: store.delete(stranger, response["id"]),
                lambda: store.input_items(stranger, response["id"], after=None, limit=20, descending=True),
                lambda: store.get(owner, "resp_not-hex"), lambda: store.get(owner, "conv_" + uuid.uuid4().hex)):
        with pytest.raises(NotFound):
            await ask()
    with pytest.raises(NotFound) as found:
        await store.context(stranger, previous_response_id=response["id"], conversation_id=None)
    assert found.value.param == "previous_response_id" and response["id"] in found.value.message
    assert (await store.get(owner, response["id"]))["id"] == response["id"]


async def test_previous_response_id_and_conversation_together_are_refused(database: Database,
                                                                         store: ResponseStore) -> None:
    owner = await new_user(database)
    conversation = conversation_wire_id(await new_conversation(database, owner))
    with pytest.raises(InvalidRequest) as refused:
        await store.context(owner, previous_response_id=f"resp_{uuid.uuid4().hex}", conversation_id=conversation)
    assert refused.value.param == "previous_response_id"


async def test_a_chain_through_a_deleted_response_is_refused_naming_it(database: Database,
                                                                       store: ResponseStore) -> None:
    owner = await new_user(database)
    first, second = a_response(), a_response()
    second["previous_response_id"] = first["id"]
    await store.save(owner, first, [user_message("a")], store=True, conversation_id=None)
    await store.save(owner, second, [user_message("b")], store=True, conversation_id=None)
    await store.delete(owner, first["id"])
    with pytest.raises(NotFound):
        await store.get(owner, first["id"])
    assert (await store.get(owner, second["id"]))["id"] == second["id"]  # the later one still answers
    with pytest.raises(NotFound) as found:
        await store.context(owner, previous_response_id=second["id"], conversation_id=None)
    assert first["id"] in found.value.message and found.value.param == "previous_response_id"


async def test_a_chain_longer_than_the_bound_is_refused(database: Database, store: ResponseStore,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "MAX_CHAIN_LENGTH", 3)
    owner = await new_user(database)
    previous = None
    ids = []
    for turn in range(4):
        response = a_response(previous=previous)
        await store.save(owner, response, [user_message(str(turn))], store=True, conversation_id=None)
        previous = response["id"]
        ids.append(previous)
    assert len(await store.context(owner, previous_response_id=ids[2], conversation_id=None)) == 6
    with pytest.raises(InvalidRequest) as refused:
        await store.context(owner, previous_response_id=ids[3], conversation_id=None)
    assert refused.value.param == "previous_response_id" and "longer than 3" in refused.value.message


async def test_expired_responses_are_gone_at_once_and_swept_in_batches(database: Database, store_for: StoreFor,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "SWEEP_BATCH", 2)
    owner = await new_user(database)
    expired, kept = store_for(retention=timedelta(seconds=-1)), store_for()
    old = [a_response() for _ in range(5)]
    for response in old:
        await expired.save(owner, response, [user_message("old")], store=True, conversation_id=None)
    fresh = a_response()
    await kept.save(owner, fresh, [user_message("new")], store=True, conversation_id=None)
    with pytest.raises(NotFound):  # expired, though not swept yet
        await kept.get(owner, old[0]["id"])
    assert await kept.sweep() == 5
    assert await kept.sweep() == 0
    assert (await kept.get(owner, fresh["id"]))["id"] == fresh["id"]
    assert await kept.sweep(datetime.now(UTC) + timedelta(days=31)) == 1


async def test_input_items_pages_in_either_order(database: Database, store: ResponseStore) -> None:
    owner = await new_user(database)
    response = a_response()
    await store.save(owner, response, [user_message(str(n)) for n in range(5)], store=True, conversation_id=None)
    newest = await store.input_items(owner, response["id"], after=None, limit=2, descending=True)
    assert newest["object"] == "list" and texts(newest["data"]) == ["4", "3"] and newest["has_more"]
    assert (newest["first_id"], newest["last_id"]) == (newest["data"][0]["id"], newest["data"][1]["id"])
    rest = await store.input_items(owner, response["id"], after=newest["last_id"], limit=20, descending=True)
    assert texts(rest["data"]) == ["2", "1", "0"] and not rest["has_more"]
    oldest = await store.input_items(owner, response["id"], after=None, limit=5, descending=False)
    assert texts(oldest["data"]) == ["0", "1", "2", "3", "4"] and not oldest["has_more"]
    assert all(item["type"] == "message" and item["status"] == "completed" for item in oldest["data"])
    with pytest.raises(InvalidRequest) as refused:
        await store.input_items(owner, response["id"], after="msg_" + uuid.uuid4().hex, limit=5, descending=False)
    assert refused.value.param == "after"


async def test_a_response_in_a_conversation_appends_its_input_and_output(database: Database,
                                                                        store: ResponseStore) -> None:
    owner = await new_user(database)
    conversation_id = await new_conversation(database, owner)
    wire = conversation_wire_id(conversation_id)
    assert await store.context(owner, previous_response_id=None, conversation_id=wire) == []
    first = a_response(function_call("call_9"), conversation=wire)
    await store.save(owner, first, [user_message("weather in Paris?")], store=False, conversation_id=wire)
    with pytest.raises(NotFound):  # store: false keeps no response
        await store.get(owner, first["id"])
    second = a_response(assistant_message("sunny, 20 C"), conversation=wire)
    await store.save(owner, second, [function_output("call_9", "20 C")], store=True, conversation_id=wire)
    items = await store.context(owner, previous_response_id=None, conversation_id=wire)
    assert texts(items) == ["weather in Paris?", "get_weather", "20 C", "sunny, 20 C"]
    assert items[1]["id"] == first["output"][0]["id"] and items[1]["call_id"] == "call_9"
    stored_input = await store.input_items(owner, second["id"], after=None, limit=20, descending=False)
    assert stored_input["data"][0]["id"] == items[2]["id"]  # one item, one id, in the response and the conversation
    async with database.session() as session:
        rows = await Messages(session).history(conversation_id)
        conversation = await Conversations(session).get(owner, conversation_id)
    assert [(row.role, row.content) for row in rows] == [
        ("user", "weather in Paris?"), ("assistant", '{"city": "Paris"}'), ("tool", "20 C"),
        ("assistant", "sunny, 20 C")]
    assert conversation is not None and conversation.title == "weather in Paris?"


async def test_conversation_context_is_owned_bounded_and_never_a_reply_in_progress(
        database: Database, store_for: StoreFor) -> None:
    store = store_for(max_messages=4)
    owner, stranger = await new_user(database), await new_user(database)
    conversation_id = await new_conversation(database, owner)
    wire = conversation_wire_id(conversation_id)
    for ask in (lambda: store.context(stranger, previous_response_id=None, conversation_id=wire),
                lambda: store.save(stranger, a_response(), [user_message("x")], store=True, conversation_id=wire),
                lambda: store.context(owner, previous_response_id=None, conversation_id="conv_bad")):
        with pytest.raises(NotFound) as found:
            await ask()
        assert found.value.param == "conversation"
    response = a_response()
    with pytest.raises(ConversationFull):  # 5 items into a conversation of at most 4: nothing is kept
        await store.save(owner, response, [user_message(str(n)) for n in range(4)], store=True, conversation_id=wire)
    with pytest.raises(NotFound):
        await store.get(owner, response["id"])
    async with database.session() as session:
        await Messages(session).append(conversation_id, MessageRole.USER, "from the page")
        await Messages(session).append(conversation_id, MessageRole.ASSISTANT, "", status=MessageStatus.IN_PROGRESS)
        await session.commit()
    with pytest.raises(ConversationBusy):
        await store.context(owner, previous_response_id=None, conversation_id=wire)
