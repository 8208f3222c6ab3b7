"""Prompt assembly for a conversation: stored turns rendered with the model's template, oldest turns dropped until
prompt plus reply fit the context (a leading system message is always kept)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine import ChatEngine, ChatInput, PreparedRequest, PromptTooLongError
from storage.models import Message, MessageRole, MessageStatus

# Replies that ended in error carry nothing the model should see; cancelled ones were shown to the user: kept.
VISIBLE_STATUSES = {MessageStatus.COMPLETED, MessageStatus.LENGTH, MessageStatus.CANCELLED}


@dataclass(slots=True)
class AssembledPrompt:
    prepared: PreparedRequest
    dropped_turns: int


def visible_turns(messages: list[Message]) -> list[dict[str, str]]:
    turns = []
    for message in messages:
        if message.role == MessageRole.ASSISTANT and (message.status not in VISIBLE_STATUSES or not message.content):
            continue
        turns.append({"role": message.role, "content": message.content})
    return turns


async def assemble(engine: ChatEngine, turns: list[dict[str, str]], fields: dict[str, Any], request_id: str
                   ) -> AssembledPrompt:
    """Prepare `turns` (ending with the new user message); drop the oldest exchanges until the reply fits."""
    system = turns[:1] if turns and turns[0]["role"] == MessageRole.SYSTEM else []
    rest = turns[len(system):]
    dropped = 0
    while True:
        try:
            return AssembledPrompt(await engine.prepare_chat(ChatInput(system + rest, fields), request_id), dropped)
        except PromptTooLongError:
            if len(rest) <= 1:
                break
        # Drop the oldest message, and the reply that answered it, so that roles keep alternating.
        drop = 2 if len(rest) > 2 and rest[1]["role"] == MessageRole.ASSISTANT else 1
        rest = rest[drop:]
        dropped += drop
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
