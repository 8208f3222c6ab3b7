"""The repository layer's tests that every database must pass, on a schema made only by Alembic migrations, against
the module's `database_url`: SQLite in tests/fast/test_storage_on_sqlite.py, Postgres in tests/test_storage.py."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy.exc import IntegrityError

from storage import Database
from storage.models import MessageRole, MessageStatus
from storage.repository import ApiKeys, Conversations, Messages, Users


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    db = Database(database_url)
    yield db
    await db.close()


async def test_ping(database: Database) -> None:
    assert await database.ping()


async def test_migrated_schema_matches_models(database: Database) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from storage.models import Base

    def diff(connection: object) -> list[object]:
        return compare_metadata(MigrationContext.configure(connection), Base.metadata)

    async with database.engine.connect() as connection:
        differences = await connection.run_sync(diff)
    assert differences == []


async def test_users_get_or_create_is_idempotent(database: Database) -> None:
    name = f"user-{uuid.uuid4().hex[:8]}"
    async with database.session() as session:
        first = await Users(session).get_or_create(name)
        second = await Users(session).get_or_create(name)
        await session.commit()
    assert first.id == second.id
    async with database.session() as session:
        assert (await Users(session).by_username(name)).id == first.id


async def make_user(database: Database) -> uuid.UUID:
    async with database.session() as session:
        user = await Users(session).create(f"user-{uuid.uuid4().hex[:8]}")
        await session.commit()
        return user.id


async def test_conversation_with_messages_round_trip(database: Database) -> None:
    owner = await make_user(database)
    async with database.session() as session:
        conversation = await Conversations(session).create(owner, "greetings")
        messages = Messages(session)
        await messages.append(conversation.id, "user", "hello", prompt_tokens=3)
        reply = await messages.append(conversation.id, "assistant", "", status="in_progress")
        await session.commit()
    async with database.session() as session:
        await Messages(session).finish(reply.id, content="hi there", status="completed", finish_reason="stop",
                                       completion_tokens=2)
        await session.commit()
    async with database.session() as session:
        history = await Messages(session).history(conversation.id)
    assert [(m.seq, m.role, m.content, m.status) for m in history] == [
        (1, "user", "hello", "completed"), (2, "assistant", "hi there", "completed")]
    assert history[1].finish_reason == "stop" and history[1].completion_tokens == 2


async def test_other_owner_sees_nothing(database: Database) -> None:
    owner, stranger = await make_user(database), await make_user(database)
    async with database.session() as session:
        conversation = await Conversations(session).create(owner, "private")
        await session.commit()
    async with database.session() as session:
        conversations = Conversations(session)
        assert await conversations.get(stranger, conversation.id) is None
        assert await conversations.rename(stranger, conversation.id, "stolen") is None
        assert not await conversations.delete(stranger, conversation.id)
        assert await conversations.list_for(stranger) == []
        await session.commit()
    async with database.session() as session:
        assert (await Conversations(session).get(owner, conversation.id)).title == "private"


async def test_list_pages_newest_first_with_cursor(database: Database) -> None:
    owner = await make_user(database)
    async with database.session() as session:
        created = [await Conversations(session).create(owner, f"c{i}") for i in range(5)]
        await session.commit()
    async with database.session() as session:
        conversations = Conversations(session)
        first = await conversations.list_for(owner, limit=2)
        last = first[-1]
        rest = await conversations.list_for(owner, limit=10, before=(last.created_at, last.id))
    titles = [c.title for c in first + rest]
    assert sorted(titles) == sorted(c.title for c in created)
    assert len(set(titles)) == 5
    stamps = [(c.created_at, c.id) for c in first + rest]
    assert stamps == sorted(stamps, reverse=True)


async def test_delete_cascades_to_messages(database: Database) -> None:
    owner = await make_user(database)
    async with database.session() as session:
        conversation = await Conversations(session).create(owner)
        await Messages(session).append(conversation.id, "user", "bye")
        await session.commit()
    async with database.session() as session:
        assert await Conversations(session).delete(owner, conversation.id)
        await session.commit()
    async with database.session() as session:
        assert await Messages(session).history(conversation.id) == []


async def test_two_writers_cannot_take_the_same_position(database: Database) -> None:
    owner = await make_user(database)
    async with database.session() as session:
        conversation = await Conversations(session).create(owner)
        await Messages(session).append(conversation.id, "user", "first")
        await session.commit()
    async with database.session() as session:
        from storage.models import Message

        session.add(Message(conversation_id=conversation.id, seq=1, role="user", content="clash"))
        with pytest.raises(IntegrityError):
            await session.commit()


async def test_api_keys_store_only_hashes_and_revoke(database: Database) -> None:
    owner = await make_user(database)
    async with database.session() as session:
        keys = ApiKeys(session)
        key = await keys.create(owner, key_hash=uuid.uuid4().hex, prefix="cf_abcd", name="ci")
        await session.commit()
    async with database.session() as session:
        keys = ApiKeys(session)
        assert (await keys.by_hash(key.key_hash)).id == key.id
        assert await keys.revoke(owner, key.id)
        assert not await keys.revoke(owner, key.id)
        await session.commit()
        assert (await keys.list_for(owner))[0].revoked_at is not None


async def test_recent_reads_newest_first_up_to_a_budget_and_size_counts_bytes(database: Database) -> None:
    """On both databases (the byte length is compiled per dialect): 500 messages of 10 bytes, pages of 64."""
    owner = await make_user(database)
    async with database.session() as session:
        conversation = await Conversations(session).create(owner)
        for _ in range(500):
            await Messages(session).append(conversation.id, MessageRole.USER, "é" * 5)  # 10 bytes
        await session.commit()
    async with database.session() as session:
        messages = Messages(session)
        assert await messages.size(conversation.id) == (500, 5000)
        by_bytes = await messages.recent(conversation.id, max_bytes=1000, max_messages=10_000, page=64)
        by_count = await messages.recent(conversation.id, max_bytes=10**9, max_messages=7, page=64)
        everything = await messages.recent(conversation.id, max_bytes=10**9, max_messages=10_000, page=64)
    assert [m.seq for m in by_bytes] == list(range(401, 501))
    assert [m.seq for m in by_count] == list(range(494, 501))
    assert len(everything) == 500


async def test_a_refused_final_write_is_stored_failed_at_once(database_url: str) -> None:
    """A reply text Postgres refuses (NUL, SQLSTATE 22021) is a data error, not an outage: not retried for
    store_timeout_s (600 s here) but stored failed at once. SQLite takes NUL: stored as given."""
    import time

    from server.conversations.writer import FinalReply, ReplyWriter

    database = Database(database_url)
    try:
        owner = await make_user(database)
        async with database.session() as session:
            conversation = await Conversations(session).create(owner)
            reply = await Messages(session).append(conversation.id, MessageRole.ASSISTANT, "flushed",
                                                   status=MessageStatus.IN_PROGRESS)
            await session.commit()
        writer = ReplyWriter(database, flush_s=1.0, heartbeat_s=5.0, store_timeout_s=600.0)
        began = time.monotonic()
        await asyncio.wait_for(writer.store_final(FinalReply(reply.id, "a\x00b", MessageStatus.COMPLETED, "stop", 2)),
                               30)
        took = time.monotonic() - began
        async with database.session() as session:
            stored = await Messages(session).get(conversation.id, reply.id)
    finally:
        await database.close()
    assert took < 5, took
    if database_url.startswith("postgresql"):
        assert (stored.status, stored.content, stored.completion_tokens) == ("failed", "flushed", 2)
    else:
        assert (stored.status, stored.content) == ("completed", "a\x00b")


async def test_message_items_and_conversation_metadata_are_stored_as_json(database: Database) -> None:
    """messages.item and conversations.metadata (migration 0003), and the pages and deletes of items."""
    owner = await make_user(database)
    call = {"kind": "function_call", "call_id": "call_1", "name": "f", "parts": [{"kind": "text", "text": "é"}]}
    async with database.session() as session:
        conversation = await Conversations(session).create(owner, meta={"topic": "ünïcode"})
        messages = Messages(session)
        first = await messages.append(conversation.id, MessageRole.USER, "q")
        second = await messages.append(conversation.id, MessageRole.ASSISTANT, "{}", item=call)
        third = await messages.append(conversation.id, MessageRole.TOOL, "42", item={"kind": "function_call_output"})
        await session.commit()
    async with database.session() as session:
        messages = Messages(session)
        assert (await messages.get(conversation.id, second.id)).item == call
        assert (await Conversations(session).get(owner, conversation.id)).meta == {"topic": "ünïcode"}
        assert [m.id for m in await messages.page(conversation.id, limit=2, descending=True)] == [third.id, second.id]
        assert [m.id for m in await messages.page(conversation.id, limit=5, descending=False, after_seq=1)] == [
            second.id, third.id]
        assert [m.id for m in await messages.page(conversation.id, limit=5, descending=True, after_seq=2)] == [
            first.id]
        assert await messages.delete(conversation.id, second.id)
        assert await Conversations(session).set_meta(owner, conversation.id, None) is not None
        await session.commit()
    async with database.session() as session:
        assert [m.id for m in await Messages(session).history(conversation.id)] == [first.id, third.id]
        assert (await Conversations(session).get(owner, conversation.id)).meta is None


async def test_a_conversations_pinned_model_is_stored_and_changed(database: Database) -> None:
    owner = await make_user(database)
    async with database.session() as session:
        pinned = await Conversations(session).create(owner, "pinned", model="tenant-a")
        plain = await Conversations(session).create(owner, "plain")
        await session.commit()
    async with database.session() as session:
        conversations = Conversations(session)
        assert (await conversations.get(owner, pinned.id)).model == "tenant-a"
        assert (await conversations.get(owner, plain.id)).model is None
        await conversations.rename(owner, pinned.id, "renamed")
        await conversations.update(owner, plain.id, model="tenant-b")
        await session.commit()
    async with database.session() as session:
        conversations = Conversations(session)
        assert ((await conversations.get(owner, pinned.id)).model, (await conversations.get(owner, plain.id)).model
                ) == ("tenant-a", "tenant-b")
        await conversations.update(owner, pinned.id, model=None)
        await session.commit()
    async with database.session() as session:
        assert (await Conversations(session).get(owner, pinned.id)).model is None


async def test_stored_responses_chain_expire_and_outlive_their_conversation(database: Database) -> None:
    """The responses table (migration 0003): a chain read in one recursive query, newest first and bounded; what has
    expired is neither read nor kept by the sweep; a deleted conversation leaves its responses, a deleted user
    takes them."""
    from datetime import timedelta

    from storage.models import StoredResponse, User, utcnow
    from storage.responses import Responses

    owner, stranger = await make_user(database), await make_user(database)
    now = utcnow()
    ids = [f"resp_{uuid.uuid4().hex}" for _ in range(4)]
    async with database.session() as session:
        conversation = await Conversations(session).create(owner)
        responses = Responses(session)
        for index, response_id in enumerate(ids):
            expires = now - timedelta(seconds=1) if index == 0 else now + timedelta(days=1)
            await responses.add(StoredResponse(
                id=response_id, owner_id=owner, conversation_id=conversation.id,
                previous_response_id=ids[index - 1] if index else None, status="completed", expires_at=expires,
                body={"id": response_id, "output": [{"n": index}]}, input_items=[{"id": f"msg_{index}"}]))
        await session.commit()
    async with database.session() as session:
        responses = Responses(session)
        chain = await responses.chain(owner, ids[3], max_length=10)
        # The first has expired: the chain stops before it, and says what it pointed to.
        assert [link.id for link in chain] == ids[3:0:-1] and chain[-1].previous_response_id == ids[0]
        assert chain[0].body["output"] == [{"n": 3}] and chain[0].input_items == [{"id": "msg_3"}]
        assert [link.id for link in await responses.chain(owner, ids[3], max_length=2)] == ids[3:1:-1]
        assert await responses.chain(stranger, ids[3], max_length=10) == []
        assert await responses.get(owner, ids[0]) is None and await responses.get(stranger, ids[1]) is None
        assert not await responses.delete(stranger, ids[1])
        assert await responses.delete_expired(now, batch=10) == 1
        await session.commit()
    async with database.session() as session:
        assert await Conversations(session).delete(owner, conversation.id)
        await session.commit()
    async with database.session() as session:
        kept = await Responses(session).get(owner, ids[1])
        assert kept is not None and kept.conversation_id is None
        await session.delete(await session.get(User, owner))
        await session.commit()
    async with database.session() as session:
        assert await session.get(StoredResponse, ids[2]) is None


def test_migration_0003_downgrades_and_upgrades_keeping_messages(fresh_database_url: str) -> None:
    """0003 undone and done again on a database with a conversation: its messages stay (SQLite drops the columns in
    place; a table copy would cascade-delete the messages)."""
    from alembic import command
    from sqlalchemy import inspect, text

    from storage import upgrade_database
    from storage.migrate import alembic_config

    async def seed() -> None:
        database = Database(fresh_database_url)
        try:
            owner = await make_user(database)
            async with database.session() as session:
                conversation = await Conversations(session).create(owner, meta={"k": "v"})
                await Messages(session).append(conversation.id, MessageRole.USER, "kept", item={"kind": "message"})
                await session.commit()
        finally:
            await database.close()

    async def inspected() -> tuple[set[str], set[str], int]:
        database = Database(fresh_database_url)
        try:
            async with database.engine.connect() as connection:
                def read(sync: Any) -> tuple[set[str], set[str]]:
                    found = inspect(sync)
                    return set(found.get_table_names()), {c["name"] for c in found.get_columns("messages")}
                tables, columns = await connection.run_sync(read)
                # Plain SQL: the models name columns the downgraded schema lacks.
                count = (await connection.execute(text("SELECT count(*) FROM messages"))).scalar_one()
            return tables, columns, count
        finally:
            await database.close()

    asyncio.run(seed())
    command.downgrade(alembic_config(fresh_database_url), "0002")
    tables, columns, count = asyncio.run(inspected())
    assert "responses" not in tables and "item" not in columns and count == 1
    upgrade_database(fresh_database_url)
    tables, columns, count = asyncio.run(inspected())
    assert "responses" in tables and "item" in columns and count == 1
