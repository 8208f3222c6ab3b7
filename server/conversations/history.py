"""Prompt assembly for a conversation: stored turns rendered with the model's template, oldest turns dropped until
prompt plus reply fit the context (a leading system message is always kept). Items added through the Responses and
Conversations APIs become chat messages: function calls an assistant's tool_calls, their outputs tool messages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine import ChatInput, EngineClient, PreparedRequest, PromptTooLongError
from server.conversations.items import ItemKind, ItemRecord
from storage.models import Message, MessageRole, MessageStatus

# Replies that ended in error carry nothing the model should see; cancelled ones were shown to the user: kept.
VISIBLE_STATUSES = {MessageStatus.COMPLETED, MessageStatus.LENGTH, MessageStatus.CANCELLED,
                    MessageStatus.INTERRUPTED}
# Chat templates know system, user, assistant and tool; OpenAI's developer role is its system role.
TEMPLATE_ROLES: dict[str, str] = {MessageRole.DEVELOPER: MessageRole.SYSTEM}
Turn = dict[str, Any]


@dataclass(slots=True)
class AssembledPrompt:
    prepared: PreparedRequest
    dropped_turns: int


def visible_turns(messages: list[Message]) -> list[Turn]:
    turns: list[Turn] = []
    for message in messages:
        if message.item is not None:
            _add_item(turns, message, ItemRecord.from_json(message.item))
            continue
        if message.role == MessageRole.ASSISTANT and (message.status not in VISIBLE_STATUSES or not message.content):
            # The exchange failed: its question goes too, so that roles keep alternating (strict templates, as
            # Mistral's and Gemma's, refuse two user turns in a row).
            if turns and turns[-1]["role"] == MessageRole.USER:
                turns.pop()
            continue
        turns.append({"role": TEMPLATE_ROLES.get(message.role, message.role),
                      "content": message.content})
    return turns


def _add_item(turns: list[Turn], message: Message, record: ItemRecord) -> None:
    """An item row as a chat message: calls join the assistant turn before them (one turn, several tool_calls),
    as a chat client sends them; reasoning is not shown to the model again."""
    if record.kind == ItemKind.FUNCTION_CALL:
        call = {"id": record.call_id, "type": "function",
                "function": {"name": record.name, "arguments": message.content}}
        if turns and turns[-1]["role"] == MessageRole.ASSISTANT:
            turns[-1].setdefault("tool_calls", []).append(call)
        else:
            turns.append({"role": MessageRole.ASSISTANT, "content": "", "tool_calls": [call]})
    elif record.kind == ItemKind.FUNCTION_CALL_OUTPUT:
        turns.append({"role": MessageRole.TOOL, "tool_call_id": record.call_id, "content": message.content})
    elif record.kind == ItemKind.MESSAGE and message.status in VISIBLE_STATUSES:
        turns.append({"role": TEMPLATE_ROLES.get(message.role, message.role), "content": message.content})


def cut_points(rest: list[Turn]) -> list[int]:
    """Where the history may start: at each user message in turn (dropping the oldest exchange with the replies,
    calls and tool outputs that answered it), down to the new message alone. A prompt never starts with a reply or
    a tool output."""
    cuts = [0]
    while len(rest) - cuts[-1] > 1:
        start = cuts[-1]
        cuts.append(next((i for i in range(start + 1, len(rest)) if rest[i]["role"] == MessageRole.USER),
                         len(rest) - 1))
    return cuts


async def assemble(engine: EngineClient, turns: list[Turn], fields: dict[str, Any], request_id: str
                   ) -> AssembledPrompt:
    """Prepare `turns` (ending with the new user message), dropping the fewest oldest exchanges that let the reply
    fit. The prompt's length falls as exchanges are dropped, so the fewest is found by bisection: a handful of
    renders for a long history, not one per dropped turn."""
    system = turns[:1] if turns and turns[0]["role"] == MessageRole.SYSTEM else []
    rest = turns[len(system):]
    cuts = cut_points(rest)

    async def attempt(index: int) -> AssembledPrompt | None:
        try:
            prepared = await engine.prepare_chat(ChatInput(system + rest[cuts[index]:], fields), request_id)
        except PromptTooLongError:
            return None
        return AssembledPrompt(prepared, cuts[index])

    found = await attempt(0)
    if found is not None:
        return found
    low, high, best = 1, len(cuts) - 1, None  # attempt(low - 1) failed; find the first that fits
    while low <= high:
        middle = (low + high) // 2
        fits = await attempt(middle)
        if fits is not None:
            best, high = fits, middle - 1
        else:
            low = middle + 1
    if best is not None:
        return best
    rest = rest[cuts[-1]:]
    dropped = cuts[-1]
    # Only the new message is left and the reply does not fit after it: give the reply the room there is, rather
    # than cut the user's words.
    alone = ChatInput(system + rest, {name: value for name, value in fields.items() if name != "max_tokens"})
    prompt = await engine.render(alone)
    room = engine.max_model_len - prompt.num_tokens
    if room < 1:
        raise PromptTooLongError(f"the message alone has {prompt.num_tokens} tokens; this model's context is "
                                 f"{engine.max_model_len} tokens")
    alone.fields["max_tokens"] = room
    return AssembledPrompt(await engine.prepare_chat(alone, request_id), dropped)
