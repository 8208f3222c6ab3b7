"""A conversation's items beyond plain text (function calls and their outputs, reasoning, messages of several parts),
as the core stores them in messages.item: dialect-neutral records that each API dialect converts its own item JSON
to and from. The row's `role` and `content` still hold who spoke and the plain text (the chat page shows them and
conversation limits count them)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from storage.models import MessageRole, MessageStatus


class ItemKind(StrEnum):
    MESSAGE = "message"
    FUNCTION_CALL = "function_call"
    FUNCTION_CALL_OUTPUT = "function_call_output"
    REASONING = "reasoning"


class PartKind(StrEnum):
    TEXT = "text"
    REFUSAL = "refusal"


# What the row's content holds for each kind: the parts' text joined by this, the call's arguments, the output.
PART_SEPARATOR = "\n"


@dataclass(frozen=True, slots=True)
class Part:
    kind: PartKind
    text: str


@dataclass(frozen=True, slots=True)
class ItemRecord:
    """messages.item. For a message or reasoning, `parts` are its content (the row's content joins their text); for
    a function call the row's content is its arguments, for its output the output."""

    kind: ItemKind
    call_id: str | None = None
    name: str | None = None
    parts: tuple[Part, ...] = ()
    summary: tuple[str, ...] = ()
    # Reasoning the client sent encrypted (another server's): kept as given, never read.
    encrypted: str | None = None
    # An assistant message's phase (commentary, final_answer), which some clients send back as they got it.
    phase: str | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind.value}
        for name in ("call_id", "name", "encrypted", "phase"):
            if (value := getattr(self, name)) is not None:
                data[name] = value
        if self.parts:
            data["parts"] = [{"kind": part.kind.value, "text": part.text} for part in self.parts]
        if self.summary:
            data["summary"] = list(self.summary)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ItemRecord:
        return cls(kind=ItemKind(data["kind"]), call_id=data.get("call_id"), name=data.get("name"),
                   parts=tuple(Part(PartKind(p["kind"]), p["text"]) for p in data.get("parts", ())),
                   summary=tuple(data.get("summary", ())), encrypted=data.get("encrypted"), phase=data.get("phase"))

    @property
    def text(self) -> str:
        return PART_SEPARATOR.join(part.text for part in self.parts)


@dataclass(frozen=True, slots=True)
class NewItem:
    """An item to append to a conversation: the row's role, text and status, and its record (None: a plain text
    message, as the chat page posts). `item_id`: the row's id, if the caller chose it."""

    role: MessageRole
    content: str
    status: MessageStatus = MessageStatus.COMPLETED
    record: ItemRecord | None = None
    item_id: uuid.UUID | None = None

    @property
    def stored_bytes(self) -> int:
        """What the item adds to the conversation's size as conversation limits count it (the row's text)."""
        return len(self.content.encode())


def record_of(item: dict[str, Any] | None) -> ItemRecord | None:
    return ItemRecord.from_json(item) if item is not None else None
