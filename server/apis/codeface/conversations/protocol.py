"""Request bodies of the conversation routes (and the seed's shapes), and the JSON views of what they return."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from msgspec import UNSET, Meta, UnsetType

from server.adapters.catalog import MAX_ADAPTER_NAME_CHARS
from server.apis.decode import NO_NUL
from server.apis.openai.sampling import GenerationFields
from server.conversations.service import ReplyRequest
from server.conversations.store import ConversationChange, Keep
from server.exceptions import InvalidRequest
from storage.models import Conversation, Message

MAX_TITLE_CHARS = 300
MAX_MESSAGE_CHARS = 200_000
Title = Annotated[str, Meta(max_length=MAX_TITLE_CHARS, pattern=NO_NUL)]
MessageText = Annotated[str, Meta(min_length=1, max_length=MAX_MESSAGE_CHARS, pattern=NO_NUL)]
# The base model or one of its LoRA adapters, by name (GET /v1/models).
ModelName = Annotated[str, Meta(max_length=MAX_ADAPTER_NAME_CHARS)]


class NewConversation(msgspec.Struct, forbid_unknown_fields=True):
    title: Title = ""
    # Pins every reply to this model (a message may leave model out, or name this one); unset: each message's.
    model: ModelName | None = None


class ConversationUpdate(msgspec.Struct, forbid_unknown_fields=True):
    """A PATCH: the fields sent change (model null unpins the conversation), the others stay."""

    title: Title | UnsetType = UNSET
    model: ModelName | UnsetType | None = UNSET

    def __post_init__(self) -> None:
        if self.title is UNSET and self.model is UNSET:
            raise InvalidRequest("send title, model or both: the fields to change")

    def change(self) -> ConversationChange:
        return ConversationChange(title=Keep.KEEP if isinstance(self.title, UnsetType) else self.title,
                                  model=Keep.KEEP if isinstance(self.model, UnsetType) else self.model)


class NewMessage(GenerationFields, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """A user message and how to generate the reply: the same generation fields as /v1/chat/completions."""

    content: MessageText
    stream: bool = False
    # Unset: the conversation's pinned model, else the base model.
    model: ModelName | None = None

    def __post_init__(self) -> None:
        # A conversation stores one reply per message, as text: what cannot be stored is refused, never dropped.
        if self.n not in (None, 1):
            raise InvalidRequest("a conversation reply is one choice: n must be 1", param="n")
        for name in ("prompt_logprobs", "return_token_ids", "return_tokens_as_token_ids"):
            if getattr(self, name):
                raise InvalidRequest(f"{name} is not stored with a conversation reply; use /v1/chat/completions",
                                     param=name)
        super().__post_init__()

    def reply_request(self) -> ReplyRequest:
        return ReplyRequest(self.content, self.engine_fields(frozenset({"content", "stream", "model"})), self.model)


class SeedChat(msgspec.Struct, forbid_unknown_fields=True):
    message: MessageText
    conversation_id: str | None = None
    stream: bool = False


CURSOR_ERROR = "invalid cursor: pass next_cursor from the previous page"


def encode_cursor(c: Conversation) -> str:
    """Where the next page starts: the last row's (created_at, id), the time in UTC with its offset (SQLite hands
    stored times back without one; they were stored in UTC)."""
    stamp = c.created_at if c.created_at.tzinfo is not None else c.created_at.replace(tzinfo=UTC)
    return base64.urlsafe_b64encode(f"{stamp.astimezone(UTC).isoformat()}|{c.id}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """A cursor encode_cursor made; anything else is a 400 naming `cursor`, never an error in the database driver
    (a time that moves past year 1 or 9999 when turned to UTC, a time without an offset)."""
    try:
        stamp, _, ident = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        created_at, last_id = datetime.fromisoformat(stamp), uuid.UUID(ident)
        if created_at.utcoffset() is None:
            raise ValueError("a cursor's time says its offset")
        return created_at.astimezone(UTC), last_id
    except (ValueError, OverflowError):  # bad base64, UTF-8, time or uuid; a time out of range
        raise InvalidRequest(CURSOR_ERROR, param="cursor") from None


def conversation_view(c: Conversation) -> dict[str, Any]:
    return {"id": str(c.id), "title": c.title, "model": c.model, "created_at": c.created_at.isoformat(),
            "updated_at": c.updated_at.isoformat()}


def message_view(m: Message) -> dict[str, Any]:
    return {"id": str(m.id), "seq": m.seq, "role": m.role, "content": m.content, "status": m.status,
            "prompt_tokens": m.prompt_tokens, "completion_tokens": m.completion_tokens,
            "finish_reason": m.finish_reason, "created_at": m.created_at.isoformat()}
