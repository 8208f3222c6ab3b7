"""vLLM's /tokenize and /detokenize request bodies: a prompt, or chat messages rendered with the chat template."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta

from engine import ChatInput
from server.apis.openai.chat_completions.protocol import MAX_MESSAGES, ChatMessage, Tool
from server.apis.openai.sampling import MAX_LIST_ITEMS, TokenId
from server.exceptions import InvalidRequest

MAX_DETOKENIZE = 1 << 16


class TokenizeRequest(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Either `prompt` (vLLM's TokenizeCompletionRequest) or `messages` (its TokenizeChatRequest)."""

    model: str | None = None
    prompt: str | None = None
    messages: Annotated[list[ChatMessage], Meta(min_length=1, max_length=MAX_MESSAGES)] | None = None
    add_special_tokens: bool | None = None
    add_generation_prompt: bool | None = None
    continue_final_message: bool | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    tools: Annotated[list[Tool], Meta(max_length=MAX_LIST_ITEMS)] | None = None
    return_token_strs: bool | None = None
    # Refused, as on the chat route.
    chat_template: Any = None
    media_io_kwargs: Any = None
    mm_processor_kwargs: Any = None

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise InvalidRequest("send either prompt or messages", param="prompt")
        for name in ("chat_template", "media_io_kwargs", "mm_processor_kwargs"):
            if getattr(self, name) is not None:
                raise InvalidRequest(f"{name} is not supported here", param=name)
        if self.messages is not None:
            for index, message in enumerate(self.messages):
                message.check_text_only(index)

    def chat_input(self) -> ChatInput:
        assert self.messages is not None
        fields = {name: value for name in ("add_generation_prompt", "continue_final_message", "add_special_tokens",
                                           "chat_template_kwargs")
                  if (value := getattr(self, name)) is not None}
        if self.tools:
            fields["tools"] = msgspec.to_builtins(self.tools)
        return ChatInput([msgspec.to_builtins(m) for m in self.messages], fields)


class DetokenizeRequest(msgspec.Struct, frozen=True, kw_only=True):
    tokens: Annotated[list[TokenId], Meta(max_length=MAX_DETOKENIZE)]
    model: str | None = None
