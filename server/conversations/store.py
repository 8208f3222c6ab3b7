"""Conversations as stored: create, list, read and change them, and what a post may read and add, both bounded (a
post reads only what its prompt could hold; a conversation holds at most a set number of messages and bytes)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum, auto
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from server.conversations.items import NewItem
from server.exceptions import ConversationFull, NotFound
from storage import Database
from storage.models import Conversation, Message, MessageRole
from storage.repository import Conversations, Messages

# A conversation without a title takes the start of its first user message (on the page, or through an API).
TITLE_FROM_MESSAGE_CHARS = 80
# The most bytes of text one token stands for, when reading history: a prompt of n tokens holds at most n times this
# many bytes of it. SmolLM2's longest token is 81 bytes (a newline and 80 spaces); a longer one only means fewer old
# turns read than could have fitted, never more read than a prompt can hold.
READ_BYTES_PER_TOKEN = 128


@dataclass(frozen=True, slots=True)
class ConversationLimits:
    """What one conversation may hold: a post that would take it past either is refused (409)."""

    max_messages: int = 10_000
    max_bytes: int = 32 << 20


class Keep(Enum):
    """A field a change leaves as it is."""

    KEEP = auto()


@dataclass(frozen=True, slots=True)
class ConversationChange:
    """What a PATCH changes: the title, and the pinned model (None unpins it)."""

    title: str | Keep = Keep.KEEP
    model: str | Keep | None = Keep.KEEP

    def values(self) -> dict[str, str | None]:
        return {name: value for name, value in (("title", self.title), ("model", self.model))
                if not isinstance(value, Keep)}


@dataclass(slots=True)
class Page:
    items: list[Any]
    more: bool


@dataclass(slots=True)
class Recent:
    """The newest messages a prompt could hold, oldest first (starting at a user message), and how many older
    messages were left unread."""

    messages: list[Message]
    unread: int


class ConversationStore:
    def __init__(self, database: Database, limits: ConversationLimits) -> None:
        self.database = database
        self.limits = limits

    async def create(self, owner_id: uuid.UUID, title: str, model: str | None = None) -> Conversation:
        async with self.database.session() as session:
            conversation = await Conversations(session).create(owner_id, title, model=model)
            await session.commit()
        return conversation

    async def list(self, owner_id: uuid.UUID, limit: int, before: tuple[datetime, uuid.UUID] | None) -> Page:
        async with self.database.session() as session:
            page = await Conversations(session).list_for(owner_id, limit=limit + 1, before=before)
        return Page(page[:limit], len(page) > limit)

    async def get(self, owner_id: uuid.UUID, conversation_id: uuid.UUID) -> Conversation:
        async with self.database.session() as session:
            conversation = await Conversations(session).get(owner_id, conversation_id)
        if conversation is None:
            raise NotFound("no such conversation", param="conversation_id")
        return conversation

    async def messages(self, owner_id: uuid.UUID, conversation_id: uuid.UUID, after_seq: int, limit: int
                       ) -> tuple[Conversation, Page]:
        conversation = await self.get(owner_id, conversation_id)
        async with self.database.session() as session:
            page = await Messages(session).history(conversation_id, after_seq=after_seq, limit=limit + 1)
        return conversation, Page(page[:limit], len(page) > limit)

    async def update(self, owner_id: uuid.UUID, conversation_id: uuid.UUID, change: ConversationChange
                     ) -> Conversation:
        async with self.database.session() as session:
            conversation = await Conversations(session).update(owner_id, conversation_id, **change.values())
            await session.commit()
        if conversation is None:
            raise NotFound("no such conversation", param="conversation_id")
        return conversation

    async def append(self, session: AsyncSession, owner_id: uuid.UUID, conversation_id: uuid.UUID,
                     items: Sequence[NewItem]) -> Sequence[Message]:
        """Items at the end of the owner's conversation, in the caller's transaction (its commit makes them
        visible; a concurrent append fails it with IntegrityError). ConversationFull past the limits."""
        conversation = await Conversations(session).get(owner_id, conversation_id)
        if conversation is None:
            raise NotFound("no such conversation", param="conversation_id")
        messages = Messages(session)
        count, size = await messages.size(conversation_id)
        added = sum(item.stored_bytes for item in items)
        if count + len(items) > self.limits.max_messages or size + added > self.limits.max_bytes:
            raise ConversationFull(
                f"this conversation cannot take {len(items)} more item(s) ({count} items, {size} bytes; at most "
                f"{self.limits.max_messages} items and {self.limits.max_bytes} bytes): start a new conversation",
                param="conversation_id")
        rows = [await messages.append(conversation_id, item.role, item.content, status=item.status,
                                      message_id=item.item_id,
                                      item=item.record.to_json() if item.record is not None else None)
                for item in items]
        first_user = next((item.content for item in items if item.role == MessageRole.USER and item.content), None)
        if not conversation.title and first_user:
            conversation.title = first_user[:TITLE_FROM_MESSAGE_CHARS]
        await session.flush()
        return rows

    async def check_room(self, conversation_id: uuid.UUID, content: str) -> None:
        """Refuses a message that would take the conversation past its limits (the message and its reply count
        as two; the reply's own bytes are not known yet, so one reply may take it past max_bytes)."""
        async with self.database.session() as session:
            count, size = await Messages(session).size(conversation_id)
        if count + 2 > self.limits.max_messages or size + len(content.encode()) > self.limits.max_bytes:
            raise ConversationFull(
                f"this conversation is full ({count} messages, {size} bytes; at most {self.limits.max_messages} "
                f"messages and {self.limits.max_bytes} bytes): start a new conversation", param="conversation_id")

    async def recent(self, conversation_id: uuid.UUID, context_tokens: int) -> Recent:
        """What the next prompt could hold: at most context_tokens messages (each takes a token at least) and
        context_tokens * READ_BYTES_PER_TOKEN bytes of text, read newest-first; the oldest turns past that are
        never loaded."""
        async with self.database.session() as session:
            messages = await Messages(session).recent(conversation_id, max_bytes=context_tokens * READ_BYTES_PER_TOKEN,
                                                      max_messages=context_tokens)
        # Roles alternate from a user message (strict templates refuse a conversation that opens with a reply).
        first = next((i for i, m in enumerate(messages) if m.role == MessageRole.USER), len(messages))
        if first == len(messages):
            return Recent([], messages[-1].seq if messages else 0)
        return Recent(messages[first:], messages[first].seq - 1)
