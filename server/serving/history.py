"""Prompt assembly for a conversation: stored turns rendered with the model's template, oldest turns dropped until
prompt plus reply fit the context (a leading system message is always kept)."""

from __future__ import annotations

from dataclasses import dataclass

from engine import ChatEngine, Prompt, PromptTooLongError
from storage.models import Message, MessageRole, MessageStatus

# Replies that ended in error carry nothing the model should see; cancelled ones were shown to the user: kept.
VISIBLE_STATUSES = {MessageStatus.COMPLETED, MessageStatus.LENGTH, MessageStatus.CANCELLED}


@dataclass(slots=True)
class AssembledPrompt:
    prompt: Prompt
    max_tokens: int
    dropped_turns: int


def visible_turns(messages: list[Message]) -> list[dict[str, str]]:
    turns = []
    for message in messages:
        if message.role == MessageRole.ASSISTANT and (message.status not in VISIBLE_STATUSES or not message.content):
            continue
        turns.append({"role": message.role, "content": message.content})
    return turns


async def assemble(engine: ChatEngine, turns: list[dict[str, str]], max_tokens: int) -> AssembledPrompt:
    """Render `turns` (ending with the new user message); drop the oldest exchanges until the reply fits."""
    system = turns[:1] if turns and turns[0]["role"] == MessageRole.SYSTEM else []
    rest = turns[len(system):]
    dropped = 0
    while True:
        prompt = await engine.render(system + rest)
        if prompt.num_tokens + max_tokens <= engine.max_model_len:
            return AssembledPrompt(prompt, max_tokens, dropped)
        if len(rest) <= 1:
            # Only the new message is left and it still does not fit: say so rather than cut the user's words.
            room = engine.max_model_len - prompt.num_tokens
            if room >= 1:
                return AssembledPrompt(prompt, room, dropped)
            raise PromptTooLongError(f"the message alone has {prompt.num_tokens} tokens; this model's context is "
                                     f"{engine.max_model_len} tokens")
        # Drop the oldest message, and the reply that answered it, so that roles keep alternating.
        drop = 2 if len(rest) > 2 and rest[1]["role"] == MessageRole.ASSISTANT else 1
        rest = rest[drop:]
        dropped += drop
