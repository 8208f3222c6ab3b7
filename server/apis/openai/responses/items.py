"""OpenAI's item JSON (messages with input_text/output_text/refusal parts, function_call, function_call_output,
reasoning) to and from the core's conversation items (server/conversations/items.py); item ids on the wire."""

from __future__ import annotations

import re
import uuid
from collections.abc import Collection
from enum import StrEnum
from typing import Any, TypeGuard

from server.apis.openai.responses.state import Item
from server.conversations.items import ItemKind, ItemRecord, NewItem, Part, PartKind
from server.exceptions import InvalidRequest
from storage.models import Message, MessageRole, MessageStatus

ITEM_PREFIXES = {ItemKind.MESSAGE: "msg_", ItemKind.FUNCTION_CALL: "fc_", ItemKind.FUNCTION_CALL_OUTPUT: "fco_",
                 ItemKind.REASONING: "rs_"}
# A wire id: a known prefix and the row's UUID as 32 hex digits (how vLLM makes its items' ids too).
WIRE_ID = re.compile(r"^(?P<prefix>[a-z]+_)(?P<hex>[0-9a-f]{32})$")
MESSAGE_ROLES = {MessageRole.USER, MessageRole.ASSISTANT, MessageRole.SYSTEM, MessageRole.DEVELOPER}


class PartType(StrEnum):
    INPUT_TEXT = "input_text"
    OUTPUT_TEXT = "output_text"
    TEXT = "text"
    REFUSAL = "refusal"
    SUMMARY_TEXT = "summary_text"
    REASONING_TEXT = "reasoning_text"


class ItemStatus(StrEnum):
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    INCOMPLETE = "incomplete"


TEXT_PARTS = {PartType.INPUT_TEXT, PartType.OUTPUT_TEXT, PartType.TEXT}
# An item that did not end (cut short, or sent so by the client) is stored interrupted: never in_progress, which
# marks a reply still being generated.
STORED_STATUS = {ItemStatus.COMPLETED: MessageStatus.COMPLETED, ItemStatus.INCOMPLETE: MessageStatus.INTERRUPTED,
                 ItemStatus.IN_PROGRESS: MessageStatus.INTERRUPTED}


def wire_id(kind: ItemKind, row_id: uuid.UUID) -> str:
    return f"{ITEM_PREFIXES[kind]}{row_id.hex}"


def row_id_of(item_id: str) -> tuple[str, uuid.UUID] | None:
    """The prefix and row id an item id names, or None if it is not one of ours."""
    found = WIRE_ID.match(item_id)
    if found is None or found["prefix"] not in ITEM_PREFIXES.values():
        return None
    return found["prefix"], uuid.UUID(hex=found["hex"])


def one_of(value: object, allowed: Collection[str]) -> TypeGuard[str]:
    """Whether a JSON value is one of these strings (a list or an object is never, and never raises)."""
    return isinstance(value, str) and value in allowed


def kind_of(item: Item, param: str) -> ItemKind:
    if not isinstance(item, dict):
        raise InvalidRequest("an item is a JSON object", param=param)
    kind = item.get("type", ItemKind.MESSAGE if "role" in item else None)
    if one_of(kind, ITEM_PREFIXES):
        return ItemKind(kind)
    raise InvalidRequest(f"item type {kind!r} is not supported here: send message, function_call, "
                         "function_call_output or reasoning items", param=f"{param}.type")


def with_id(item: Item, param: str, *, ours: bool) -> tuple[Item, uuid.UUID]:
    """The item with an id (its own, or a new one), and the row id a conversation stores it under: the same UUID
    when the id is new or `ours` (a response's output), so that a response's items and the conversation's share
    ids; a fresh one for an id the client chose (it may name a row already stored)."""
    kind = kind_of(item, param)
    given = item.get("id")
    if given is None:
        row_id = uuid.uuid4()
        return {**item, "id": wire_id(kind, row_id)}, row_id
    parsed = row_id_of(given) if ours and isinstance(given, str) else None
    return item, parsed[1] if parsed is not None else uuid.uuid4()


def new_items(items: list[Item], field: str, *, ours: bool) -> list[tuple[Item, NewItem]]:
    """Each item with its id (see with_id), and as a conversation row."""
    converted = []
    for index, item in enumerate(items):
        where = f"{field}[{index}]"
        identified, row_id = with_id(item, where, ours=ours)
        converted.append((identified, new_item(identified, where, row_id)))
    return converted


def _text(item: Item, name: str, param: str, *, required: bool = True) -> str:
    value = item.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise InvalidRequest(f"{name} must be a string", param=f"{param}.{name}")
    if "\x00" in value:
        raise InvalidRequest(f"{name} must not contain NUL characters", param=f"{param}.{name}")
    return value


def _status(item: Item, param: str) -> MessageStatus:
    raw = item.get("status")
    if raw is None:
        return MessageStatus.COMPLETED
    if not one_of(raw, STORED_STATUS):
        raise InvalidRequest("status must be in_progress, completed or incomplete", param=f"{param}.status")
    return STORED_STATUS[ItemStatus(raw)]


def _parts(content: Any, param: str, allowed: set[PartType], *, text: bool = True) -> tuple[Part, ...]:
    """Content parts of the allowed types (or, if `text`, a plain string: one text part)."""
    if isinstance(content, str) and text:
        return (Part(PartKind.TEXT, _text({"text": content}, "text", param)),)
    if not isinstance(content, list):
        raise InvalidRequest("content must be a list of content parts" + (" or a string" if text else ""),
                             param=f"{param}.content")
    parts = []
    for index, part in enumerate(content):
        where = f"{param}.content[{index}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if not one_of(kind, allowed):
            raise InvalidRequest(f"content part type {kind!r} is not supported here (text only: "
                                 f"{', '.join(sorted(allowed))})", param=f"{where}.type")
        if part.get("annotations"):
            raise InvalidRequest("annotations are not stored", param=f"{where}.annotations")
        if kind == PartType.REFUSAL:
            parts.append(Part(PartKind.REFUSAL, _text(part, "refusal", where)))
        else:
            parts.append(Part(PartKind.TEXT, _text(part, "text", where)))
    return tuple(parts)


def new_item(item: Item, param: str, item_id: uuid.UUID | None = None) -> NewItem:
    """An OpenAI item as a conversation row; a 400 naming the field for anything this server cannot keep."""
    if not isinstance(item, dict):
        raise InvalidRequest("an item is a JSON object", param=param)
    kind = kind_of(item, param)
    status = _status(item, param)
    if kind == ItemKind.FUNCTION_CALL:
        record = ItemRecord(kind, call_id=_text(item, "call_id", param), name=_text(item, "name", param))
        return NewItem(MessageRole.ASSISTANT, _text(item, "arguments", param), status, record, item_id)
    if kind == ItemKind.FUNCTION_CALL_OUTPUT:
        output = item.get("output")
        if not isinstance(output, str):
            raise InvalidRequest("output must be a string (a list of content parts is not supported)",
                                 param=f"{param}.output")
        record = ItemRecord(kind, call_id=_text(item, "call_id", param))
        return NewItem(MessageRole.TOOL, _text(item, "output", param), status, record, item_id)
    if kind == ItemKind.REASONING:
        summary = _parts(item.get("summary") or [], f"{param}.summary", {PartType.SUMMARY_TEXT}, text=False)
        parts = _parts(item.get("content") or [], param, {PartType.REASONING_TEXT}, text=False)
        encrypted = _text(item, "encrypted_content", param, required=False) or None
        record = ItemRecord(kind, parts=parts, summary=tuple(p.text for p in summary), encrypted=encrypted)
        return NewItem(MessageRole.ASSISTANT, record.text, status, record, item_id)
    role = item.get("role")
    if not one_of(role, MESSAGE_ROLES):
        raise InvalidRequest("a message's role is user, assistant, system or developer", param=f"{param}.role")
    role = MessageRole(str(role))
    # Either text part in either direction (clients send a reply back as input_text or output_text).
    allowed = TEXT_PARTS | {PartType.REFUSAL} if role == MessageRole.ASSISTANT else TEXT_PARTS
    parts = _parts(item.get("content"), param, allowed)
    phase = item.get("phase")
    if phase is not None and not one_of(phase, ("commentary", "final_answer")):
        raise InvalidRequest("phase must be commentary or final_answer", param=f"{param}.phase")
    record = ItemRecord(ItemKind.MESSAGE, parts=parts, phase=phase)
    plain = len(parts) == 1 and parts[0].kind == PartKind.TEXT and phase is None
    return NewItem(role, record.text, status, None if plain else record, item_id)


def _status_of(message: Message) -> str:
    if message.status == MessageStatus.COMPLETED:
        return ItemStatus.COMPLETED
    return ItemStatus.IN_PROGRESS if message.status == MessageStatus.IN_PROGRESS else ItemStatus.INCOMPLETE


def _wire_part(part: Part, role: str) -> dict[str, Any]:
    if part.kind == PartKind.REFUSAL:
        return {"type": PartType.REFUSAL, "refusal": part.text}
    if role == MessageRole.ASSISTANT:
        return {"type": PartType.OUTPUT_TEXT, "text": part.text, "annotations": []}
    return {"type": PartType.INPUT_TEXT, "text": part.text}


def wire_item(message: Message) -> Item:
    """A conversation row as OpenAI's item (a message posted on the chat page is a plain text message)."""
    record = ItemRecord.from_json(message.item) if message.item is not None else None
    kind = record.kind if record is not None else ItemKind.MESSAGE
    base: Item = {"id": wire_id(kind, message.id), "type": kind.value, "status": _status_of(message)}
    if record is not None and kind == ItemKind.FUNCTION_CALL:
        return {**base, "call_id": record.call_id, "name": record.name, "arguments": message.content}
    if record is not None and kind == ItemKind.FUNCTION_CALL_OUTPUT:
        return {**base, "call_id": record.call_id, "output": message.content}
    if record is not None and kind == ItemKind.REASONING:
        reasoning: Item = {**base, "summary": [{"type": PartType.SUMMARY_TEXT, "text": text}
                                               for text in record.summary]}
        if record.parts:
            reasoning["content"] = [{"type": PartType.REASONING_TEXT, "text": p.text} for p in record.parts]
        if record.encrypted is not None:
            reasoning["encrypted_content"] = record.encrypted
        return reasoning
    parts = record.parts if record is not None else (Part(PartKind.TEXT, message.content),)
    wire: Item = {**base, "role": message.role, "content": [_wire_part(p, message.role) for p in parts]}
    if record is not None and record.phase is not None:
        wire["phase"] = record.phase
    return wire


def item_list(data: list[Item], has_more: bool) -> dict[str, Any]:
    """OpenAI's list shape for items (a page of input items or conversation items)."""
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": has_more}
