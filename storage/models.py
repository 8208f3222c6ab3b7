"""Typed SQLAlchemy models: users, API keys, conversations and their messages (items), stored responses and LoRA
adapters."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy import JSON, DateTime, ForeignKey, Index, Integer, String, Text, Uuid
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class MessageRole(StrEnum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    # Items added through OpenAI's Conversations and Responses APIs: instructions from the developer, and a
    # function call's output.
    DEVELOPER = "developer"
    TOOL = "tool"


class MessageStatus(StrEnum):
    """A user message is stored `completed`; a reply starts `in_progress` and ends in one of the others."""

    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    LENGTH = "length"
    CANCELLED = "cancelled"
    # The server stopped it (shutdown's deadline), or it was found stale: its replica died mid-reply.
    INTERRUPTED = "interrupted"
    FAILED = "failed"


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: DateTime(timezone=True)}


class User(Base):
    __tablename__ = "users"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    username: Mapped[str] = mapped_column(String(150), unique=True)
    password_hash: Mapped[str | None] = mapped_column(String(255))
    is_admin: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The models (base model, adapters) this user may use, set by an admin; NULL: all.
    allowed_models: Mapped[list[str] | None] = mapped_column(JSON)

    api_keys: Mapped[list[ApiKey]] = relationship(back_populates="owner", cascade="all, delete-orphan")


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    prefix: Mapped[str] = mapped_column(String(32))
    key_hash: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    requests_per_minute: Mapped[int | None]
    tokens_per_minute: Mapped[int | None]
    max_concurrent_streams: Mapped[int | None]
    # The key's share of the engine's queue under overload, relative to other tenants (NULL = 1).
    weight: Mapped[int | None]
    # The models this key may use, within its user's; NULL: all of its user's.
    allowed_models: Mapped[list[str] | None] = mapped_column(JSON)

    owner: Mapped[User] = relationship(back_populates="api_keys")


class Conversation(Base):
    __tablename__ = "conversations"
    __table_args__ = (Index("ix_conversations_owner_created", "owner_id", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    title: Mapped[str] = mapped_column(String(300), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    # OpenAI's conversation metadata: up to 16 string pairs ("metadata" is taken on a declarative class).
    meta: Mapped[dict[str, str] | None] = mapped_column("metadata", JSON)
    # The model every reply is generated with (the base model or a LoRA adapter, by name); NULL: each message's.
    model: Mapped[str | None] = mapped_column(String(200))

    messages: Mapped[list[Message]] = relationship(
        back_populates="conversation", cascade="all, delete-orphan", order_by="Message.seq"
    )


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (Index("ix_messages_conversation_seq", "conversation_id", "seq", unique=True),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    conversation_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    # Position in the conversation; unique per conversation, so two writers cannot interleave history.
    seq: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(20))
    content: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(20), default=MessageStatus.COMPLETED)
    prompt_tokens: Mapped[int | None]
    completion_tokens: Mapped[int | None]
    finish_reason: Mapped[str | None] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    # What a plain text message cannot say (a function call or its output, reasoning, several content parts): the
    # core's ItemRecord as JSON (server/conversations/items.py). NULL: the row is `role` saying `content`.
    item: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    conversation: Mapped[Conversation] = relationship(back_populates="messages")


class LoraAdapter(Base):
    """A LoRA adapter an admin loaded at run time: every API process and replica loads it at its start."""

    __tablename__ = "lora_adapters"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    path: Mapped[str] = mapped_column(Text)
    created_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class StoredResponse(Base):
    """A Responses API response kept for retrieval and previous_response_id chains until `expires_at`."""

    __tablename__ = "responses"

    # "resp_" and 32 hex digits, as returned to the client.
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    # Deleting the conversation keeps the response (a separate object, as OpenAI's) until it expires.
    conversation_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("conversations.id", ondelete="SET NULL"),
                                                              index=True)
    previous_response_id: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    # The whole Response object as it was returned, and its input items (each with its id).
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    input_items: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    # A background response's heartbeat (its replica writes it while generating: a stale one is reconciled), and the
    # sequence number of its last streamed event once it has ended (a replay from storage ends with it).
    updated_at: Mapped[datetime | None] = mapped_column(default=utcnow, onupdate=utcnow, index=True)
    last_sequence: Mapped[int | None] = mapped_column()
