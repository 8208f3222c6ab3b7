"""OpenAI's Conversations API as a view of CodeFace conversations: the same rows the chat page reads and writes, with
metadata, and items that may be function calls, their outputs or reasoning (server/conversations/items.py)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.exc import IntegrityError

from server.apis.openai.responses.ids import conversation_uuid, conversation_wire_id
from server.apis.openai.responses.items import item_list, new_items, row_id_of, wire_item
from server.apis.openai.responses.state import Item
from server.conversations.service import ConversationService
from server.exceptions import Conflict, ConversationBusy, InvalidRequest, NotFound
from storage import Database
from storage.models import Conversation, Message, MessageStatus
from storage.repository import Conversations, Messages


def epoch_seconds(stamp: datetime) -> int:
    """SQLite hands stored times back without their offset: they were stored in UTC."""
    return int((stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=UTC)).timestamp())


def conversation_object(conversation: Conversation) -> dict[str, Any]:
    return {"id": conversation_wire_id(conversation.id), "object": "conversation",
            "created_at": epoch_seconds(conversation.created_at), "metadata": conversation.meta or {}}


class OpenAIConversations:
    def __init__(self, database: Database, conversations: ConversationService) -> None:
        self.database = database
        self.conversations = conversations

    async def create(self, owner_id: uuid.UUID, items: list[Item], meta: dict[str, str] | None) -> dict[str, Any]:
        new = [row for _, row in new_items(items, "items", ours=False)]
        async with self.database.session() as session:
            conversation = await Conversations(session).create(owner_id, meta=meta)
            await self.conversations.append(session, owner_id, conversation.id, new)
            await session.commit()
        return conversation_object(conversation)

    async def get(self, owner_id: uuid.UUID, wire_id: str) -> dict[str, Any]:
        return conversation_object(await self.conversations.get(owner_id, conversation_uuid(wire_id)))

    async def update(self, owner_id: uuid.UUID, wire_id: str, meta: dict[str, str] | None) -> dict[str, Any]:
        conversation_id = conversation_uuid(wire_id)
        async with self.database.session() as session:
            conversation = await Conversations(session).set_meta(owner_id, conversation_id, meta)
            await session.commit()
        if conversation is None:
            raise NotFound("no such conversation", param="conversation_id")
        return conversation_object(conversation)

    async def delete(self, owner_id: uuid.UUID, wire_id: str) -> dict[str, Any]:
        """As the chat page's delete: a reply being generated in it is cancelled first."""
        await self.conversations.delete(owner_id, conversation_uuid(wire_id))
        return {"id": wire_id, "object": "conversation.deleted", "deleted": True}

    async def list_items(self, owner_id: uuid.UUID, wire_id: str, *, after: str | None, limit: int,
                         descending: bool) -> dict[str, Any]:
        conversation_id = conversation_uuid(wire_id)
        await self.conversations.get(owner_id, conversation_id)
        async with self.database.session() as session:
            messages = Messages(session)
            after_seq = None
            if after is not None:
                anchor = await self._row(messages, conversation_id, after)
                if anchor is None:
                    raise InvalidRequest(f"after: no item {after!r} in this conversation", param="after")
                after_seq = anchor.seq
            rows = await messages.page(conversation_id, limit=limit + 1, descending=descending, after_seq=after_seq)
        return item_list([wire_item(row) for row in rows[:limit]], len(rows) > limit)

    async def add_items(self, owner_id: uuid.UUID, wire_id: str, items: list[Item]) -> dict[str, Any]:
        conversation_id = conversation_uuid(wire_id)
        new = [row for _, row in new_items(items, "items", ours=False)]
        try:
            async with self.database.session() as session:
                rows = await self.conversations.append(session, owner_id, conversation_id, new)
                await session.commit()
        except IntegrityError:
            raise ConversationBusy("another item was added to this conversation at the same time",
                                   param="conversation_id") from None
        return item_list([wire_item(row) for row in rows], False)

    async def get_item(self, owner_id: uuid.UUID, wire_id: str, item_id: str) -> Item:
        conversation_id = conversation_uuid(wire_id)
        await self.conversations.get(owner_id, conversation_id)
        async with self.database.session() as session:
            row = await self._row(Messages(session), conversation_id, item_id)
        if row is None:
            raise NotFound(f"item {item_id!r} not found", param="item_id")
        return wire_item(row)

    async def delete_item(self, owner_id: uuid.UUID, wire_id: str, item_id: str) -> dict[str, Any]:
        conversation_id = conversation_uuid(wire_id)
        conversation = await self.conversations.get(owner_id, conversation_id)
        async with self.database.session() as session:
            messages = Messages(session)
            row = await self._row(messages, conversation_id, item_id)
            if row is None:
                raise NotFound(f"item {item_id!r} not found", param="item_id")
            if row.status == MessageStatus.IN_PROGRESS:
                raise Conflict("this reply is being generated: cancel it first", param="item_id")
            await messages.delete(conversation_id, row.id)
            await session.commit()
        return conversation_object(conversation)

    @staticmethod
    async def _row(messages: Messages, conversation_id: uuid.UUID, item_id: str) -> Message | None:
        """The row an item id names in this conversation: its prefix must be its kind's (msg_ names no call)."""
        parsed = row_id_of(item_id)
        row = await messages.get(conversation_id, parsed[1]) if parsed is not None else None
        return row if row is not None and wire_item(row)["id"] == item_id else None
