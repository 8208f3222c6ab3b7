"""The OpenAI chat completion request, as vLLM extends it: messages (with tool calls and tool results), tools, the
generation fields, streaming options; and its conversion to what the engine takes."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from engine import ChatInput
from server.apis.openai.sampling import MAX_TOP_LOGPROBS, GenerationFields
from server.exceptions import InvalidRequest

MAX_TOOLS = 128
# A chat longer than this is refused at decoding, before any template renders it.
MAX_MESSAGES = 4096
TEXT_PART = "text"


class ChatRole(StrEnum):
    SYSTEM = "system"
    DEVELOPER = "developer"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"
    FUNCTION = "function"


class ContentPart(msgspec.Struct, frozen=True):
    type: str
    text: str | None = None


class FunctionCall(msgspec.Struct, frozen=True):
    name: str
    arguments: str = "{}"


class ToolCall(msgspec.Struct, frozen=True):
    function: FunctionCall
    id: str = ""
    type: Literal["function"] = "function"


class ChatMessage(msgspec.Struct, frozen=True, omit_defaults=True):
    role: ChatRole
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: Annotated[list[ToolCall], Meta(max_length=MAX_TOOLS)] | None = None
    tool_call_id: str | None = None
    reasoning: str | None = None

    def check_text_only(self, index: int) -> None:
        if isinstance(self.content, list):
            for part in self.content:
                if part.type != TEXT_PART or part.text is None:
                    raise InvalidRequest(f"content part of type {part.type!r} is not supported; this model reads "
                                         "text only", param=f"messages[{index}].content")


class FunctionSpec(msgspec.Struct, frozen=True, omit_defaults=True):
    name: Annotated[str, Meta(min_length=1, max_length=64)]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(msgspec.Struct, frozen=True):
    function: FunctionSpec
    type: Literal["function"] = "function"


class NamedFunction(msgspec.Struct, frozen=True):
    name: str


class NamedToolChoice(msgspec.Struct, frozen=True):
    function: NamedFunction
    type: Literal["function"] = "function"


class StreamOptions(msgspec.Struct, frozen=True, omit_defaults=True):
    include_usage: bool | None = None
    continuous_usage_stats: bool | None = None


# Fields of this schema the server reads itself rather than hand to the engine.
SERVER_ONLY = frozenset({"messages", "model", "user", "request_id", "prompt_cache_key"})


class StreamedGeneration(GenerationFields, frozen=True, kw_only=True, omit_defaults=True):
    """What chat and completion requests share beyond sampling: the model, streaming and its options, the ids."""

    model: str | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    user: Annotated[str, Meta(max_length=256)] | None = None
    request_id: Annotated[str, Meta(min_length=1, max_length=128)] | None = None

    def __post_init__(self) -> None:
        if self.stream_options is not None and not self.stream:
            raise InvalidRequest("stream_options requires stream to be true", param="stream_options")
        super().__post_init__()

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and bool(self.stream_options.include_usage)

    @property
    def continuous_usage(self) -> bool:
        return self.include_usage and bool(self.stream_options and self.stream_options.continuous_usage_stats)


class ChatCompletionRequest(StreamedGeneration, frozen=True, kw_only=True, omit_defaults=True):
    messages: Annotated[list[ChatMessage], Meta(max_length=MAX_MESSAGES)]
    max_completion_tokens: Annotated[int, Meta(ge=1, le=2**31 - 1)] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    tools: Annotated[list[Tool], Meta(min_length=1, max_length=MAX_TOOLS)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    echo: bool | None = None
    add_generation_prompt: bool | None = None
    continue_final_message: bool | None = None
    documents: list[dict[str, str]] | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = None
    include_reasoning: bool | None = None
    prompt_cache_key: Annotated[str, Meta(max_length=256)] | None = None
    # Refused (see server.apis.openai.fields): declared so that they are never silently ignored.
    chat_template: Any = None
    media_io_kwargs: Any = None
    mm_processor_kwargs: Any = None
    return_prompt_text: Any = None

    def __post_init__(self) -> None:
        if not self.messages:
            raise InvalidRequest("messages must contain at least one message", param="messages")
        if all(m.role != ChatRole.USER for m in self.messages):
            raise InvalidRequest("messages must contain at least one user message", param="messages")
        for index, message in enumerate(self.messages):
            message.check_text_only(index)
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidRequest("top_logprobs requires logprobs to be true", param="top_logprobs")
        if self.tool_choice not in (None, "none") and not self.tools:
            raise InvalidRequest("tool_choice requires tools", param="tool_choice")
        if isinstance(self.tool_choice, NamedToolChoice) and self.tools and self.tool_choice.function.name not in {
                tool.function.name for tool in self.tools}:
            raise InvalidRequest(f"tool_choice names {self.tool_choice.function.name!r}, which is not in tools",
                                 param="tool_choice")
        super().__post_init__()

    def chat_input(self) -> ChatInput:
        return ChatInput([msgspec.to_builtins(m) for m in self.messages], self.engine_fields(SERVER_ONLY))
