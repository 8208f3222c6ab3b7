"""The OpenAI chat completion request: messages, sampling fields and streaming options, and their conversion to
the chat the engine renders."""

from __future__ import annotations

from enum import StrEnum

import msgspec

from server.exceptions import InvalidRequest
from server.protocol.sampling import SamplingFields


class ChatRole(StrEnum):
    SYSTEM = "system"
    # OpenAI's newer name for the system role; chat templates know only "system".
    DEVELOPER = "developer"
    USER = "user"
    ASSISTANT = "assistant"


TEXT_PART = "text"


class ContentPart(msgspec.Struct, frozen=True):
    type: str
    text: str | None = None


class ChatMessage(msgspec.Struct, frozen=True):
    role: ChatRole
    content: str | list[ContentPart] | None = None
    name: str | None = None

    def text(self, index: int) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        texts = []
        for part in self.content:
            if part.type != TEXT_PART or part.text is None:
                raise InvalidRequest(f"content part of type {part.type!r} is not supported; this model reads text "
                                     "only", param=f"messages[{index}].content")
            texts.append(part.text)
        return "".join(texts)

    def template_role(self) -> str:
        return str(ChatRole.SYSTEM if self.role == ChatRole.DEVELOPER else self.role)


class StreamOptions(msgspec.Struct, frozen=True):
    include_usage: bool = False


class ChatCompletionRequest(SamplingFields, frozen=True, kw_only=True):
    messages: list[ChatMessage]
    model: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    def __post_init__(self) -> None:
        if not self.messages:
            raise InvalidRequest("messages must contain at least one message", param="messages")
        if all(m.role != ChatRole.USER for m in self.messages):
            raise InvalidRequest("messages must contain at least one user message", param="messages")
        super().__post_init__()

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def chat_messages(self) -> list[dict[str, str]]:
        """The messages as the model's chat template takes them."""
        return [{"role": message.template_role(), "content": message.text(index)}
                for index, message in enumerate(self.messages)]
