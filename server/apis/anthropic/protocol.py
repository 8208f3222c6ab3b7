"""Anthropic's Messages request (the fields of vLLM's AnthropicMessagesRequest, bounded and checked), and its
translation to what the engine takes: OpenAI-format messages and vLLM's chat fields, converted as vllm serve's
/v1/messages converts them (vllm/entrypoints/anthropic/serving.py), so that the same request renders the same
prompt. Every refusal is an InvalidRequest naming the field."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from engine import ChatInput
from server.apis.anthropic.fields import MESSAGES_FIELDS
from server.apis.decode import INT32_MAX, PositiveInt
from server.apis.openai.chat_completions.protocol import MAX_MESSAGES, MAX_TOOLS
from server.apis.openai.fields import refusal
from server.apis.openai.sampling import MAX_STOP_SEQUENCES, TOP_K_DISABLED, Temperature, TopP
from server.exceptions import InvalidRequest

MAX_BLOCKS = 4096
# Anthropic's floor for a thinking budget (vLLM's model has it too).
MIN_THINKING_BUDGET = 1024
# Claude Code's first system block: a per-request hash that would defeat the prefix cache; vllm serve drops it.
BILLING_HEADER = "x-anthropic-billing-header"
# What vllm serve names the schema of output_config.format for the engine.
JSON_SCHEMA_NAME = "json_schema"


class Role(StrEnum):
    USER = "user"
    ASSISTANT = "assistant"
    SYSTEM = "system"


class BlockType(StrEnum):
    TEXT = "text"
    TOOL_USE = "tool_use"
    TOOL_RESULT = "tool_result"
    THINKING = "thinking"
    REDACTED_THINKING = "redacted_thinking"


# Blocks Anthropic's API takes that this server does not: each is a 400 that names it.
UNSERVED_BLOCKS = {
    "image": "this server's models read text only",
    "document": "this server's models read text only",
    "search_result": "search results are not served",
    "container_upload": "code execution is not served",
}
# Where each served block may appear.
BLOCKS_OF = {
    Role.USER: frozenset({BlockType.TEXT, BlockType.TOOL_RESULT}),
    Role.ASSISTANT: frozenset({BlockType.TEXT, BlockType.TOOL_USE, BlockType.THINKING, BlockType.REDACTED_THINKING}),
    Role.SYSTEM: frozenset({BlockType.TEXT}),
}


class ContentBlock(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """One block of a message, any type: checked by type in MessagesRequest (a block's place in the request names
    it). cache_control, citations and caller are accepted and have no effect (vLLM's prefix cache is automatic)."""

    type: Annotated[str, Meta(max_length=64)]
    text: str | None = None
    id: Annotated[str, Meta(max_length=256)] | None = None
    name: Annotated[str, Meta(max_length=256)] | None = None
    input: dict[str, Any] | None = None
    tool_use_id: Annotated[str, Meta(max_length=256)] | None = None
    content: str | Annotated[list[dict[str, Any]], Meta(max_length=MAX_BLOCKS)] | None = None
    is_error: bool | None = None
    thinking: str | None = None
    signature: str | None = None
    data: str | None = None
    cache_control: Any = None
    citations: Any = None
    caller: Any = None  # who called a tool: Anthropic's answers carry it, and clients send their blocks back
    # Of the blocks refused by type (image, document): declared so that the refusal names the block, not a field.
    source: Any = None
    title: Any = None
    context: Any = None


Blocks = Annotated[list[ContentBlock], Meta(max_length=MAX_BLOCKS)]


class Message(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    role: Role
    content: str | Blocks


class Tool(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    name: Annotated[str, Meta(min_length=1, max_length=128)]
    input_schema: dict[str, Any]
    description: str | None = None
    strict: bool | None = None
    type: Literal["custom"] | None = None
    cache_control: Any = None
    defer_loading: bool | None = None

    def function(self) -> dict[str, Any]:
        """vLLM's function tool, as vllm serve converts it (input_schema's type defaults to object)."""
        spec: dict[str, Any] = {"name": self.name, "parameters": {"type": "object", **self.input_schema}}
        if self.description is not None:
            spec["description"] = self.description
        if self.strict is not None:
            spec["strict"] = self.strict
        return {"type": "function", "function": spec}


class ToolChoice(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class Thinking(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: Annotated[int, Meta(ge=MIN_THINKING_BUDGET, le=INT32_MAX)] | None = None
    display: Literal["summarized", "omitted", "updates"] | None = None


class OutputFormat(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    type: Literal["json_schema"] = "json_schema"
    schema: dict[str, Any] | None = None


class OutputConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    effort: Literal["low", "medium", "high", "xhigh", "max"] | None = None
    format: OutputFormat | None = None


class Metadata(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    user_id: Annotated[str, Meta(max_length=256)] | None = None


class Conversation(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """What a Messages request and a count_tokens request share: the prompt and what renders it."""

    model: Annotated[str, Meta(min_length=1, max_length=256)]
    messages: Annotated[list[Message], Meta(max_length=MAX_MESSAGES)]
    system: str | Blocks | None = None
    tools: Annotated[list[Tool], Meta(min_length=1, max_length=MAX_TOOLS)] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None
    output_config: OutputConfig | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    cache_control: Any = None

    def __post_init__(self) -> None:
        if not self.messages:
            raise InvalidRequest("messages must contain at least one message", param="messages")
        if isinstance(self.system, list):
            for index, block in enumerate(self.system):
                check_block(block, Role.SYSTEM, f"system[{index}]")
        tool_uses: set[str] = set()
        for index, message in enumerate(self.messages):
            if isinstance(message.content, str):
                continue
            for position, block in enumerate(message.content):
                where = f"messages[{index}].content[{position}]"
                check_block(block, message.role, where)
                if block.type == BlockType.TOOL_USE and block.id is not None:
                    tool_uses.add(block.id)
                if block.type == BlockType.TOOL_RESULT and block.tool_use_id not in tool_uses:
                    raise InvalidRequest(f"tool_result block refers to tool_use id {block.tool_use_id!r}, which no "
                                         "earlier assistant message has", param=f"{where}.tool_use_id")
        for index, tool in enumerate(self.tools or []):
            if tool.defer_loading:
                raise InvalidRequest("defer_loading is not supported: every tool is declared to the model",
                                     param=f"tools[{index}].defer_loading")
        self.check_tool_choice()
        if self.thinking is not None and self.thinking.type == "enabled" and self.thinking.budget_tokens is None:
            raise InvalidRequest("thinking of type enabled needs budget_tokens", param="thinking.budget_tokens")

    def check_tool_choice(self) -> None:
        choice = self.tool_choice
        if choice is None:
            return
        if choice.type == "tool" and not choice.name:
            raise InvalidRequest("tool_choice of type tool needs a name", param="tool_choice.name")
        if choice.type != "none" and not self.tools:
            raise InvalidRequest(f"tool_choice {choice.type!r} needs tools", param="tool_choice")
        if choice.type == "tool" and choice.name not in {tool.name for tool in self.tools or []}:
            raise InvalidRequest(f"tool_choice names {choice.name!r}, which is not in tools", param="tool_choice.name")

    def chat_input(self) -> ChatInput:
        """The engine's request: vllm serve's conversion of the messages, and the fields under vLLM's names."""
        messages = [*system_messages(self.system), *openai_messages(self.messages)]
        fields: dict[str, Any] = {}
        if self.chat_template_kwargs is not None:
            fields["chat_template_kwargs"] = self.chat_template_kwargs
        self.add_output_fields(fields)
        self.add_tool_fields(fields)
        return ChatInput(messages, fields)

    def add_output_fields(self, fields: dict[str, Any]) -> None:
        config = self.output_config
        if config is not None and config.format is not None and config.format.schema is not None:
            fields["response_format"] = {"type": "json_schema",
                                         "json_schema": {"name": JSON_SCHEMA_NAME, "schema": config.format.schema}}
        if config is not None and config.effort is not None:
            fields["reasoning_effort"] = config.effort
        if self.thinking is not None:
            if self.thinking.type == "disabled":
                fields["reasoning_effort"] = "none"
            elif self.thinking.type == "enabled":
                fields["thinking_token_budget"] = self.thinking.budget_tokens

    def add_tool_fields(self, fields: dict[str, Any]) -> None:
        choice = self.tool_choice
        if choice is not None:
            if choice.disable_parallel_tool_use is not None:
                fields["parallel_tool_calls"] = not choice.disable_parallel_tool_use
            fields["tool_choice"] = ({"type": "function", "function": {"name": choice.name}}
                                     if choice.type == "tool" else {"any": "required"}.get(choice.type, choice.type))
        if self.tools:
            fields["tools"] = [tool.function() for tool in self.tools]
            fields.setdefault("tool_choice", "auto")


class MessagesRequest(Conversation, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    max_tokens: PositiveInt
    metadata: Metadata | None = None
    stop_sequences: Annotated[list[str], Meta(max_length=MAX_STOP_SEQUENCES)] | None = None
    stream: bool | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: Annotated[int, Meta(ge=TOP_K_DISABLED, le=INT32_MAX)] | None = None
    cache_salt: Annotated[str, Meta(min_length=1, max_length=128)] | None = None
    vllm_xargs: dict[str, str | int | float | list[str | int | float]] | None = None
    # Refused unless they ask for nothing (see server.apis.anthropic.fields): declared so that they are never ignored.
    mm_payload: Any = None
    return_mm_kwargs: Any = None
    watermarking: Any = None
    kv_transfer_params: Any = None
    ec_transfer_params: Any = None

    def __post_init__(self) -> None:
        for name in self.__struct_fields__:
            reason = refusal(MESSAGES_FIELDS, name, getattr(self, name))
            if reason is not None:
                raise InvalidRequest(reason, param=name)
        if any(not sequence for sequence in self.stop_sequences or []):
            raise InvalidRequest("stop sequences must not be empty strings", param="stop_sequences")
        if (self.thinking is not None and self.thinking.budget_tokens is not None
                and self.thinking.budget_tokens >= self.max_tokens):
            raise InvalidRequest("thinking.budget_tokens must be less than max_tokens", param="thinking.budget_tokens")
        super().__post_init__()

    @property
    def end_user(self) -> str | None:
        return self.metadata.user_id if self.metadata is not None else None

    def chat_input(self) -> ChatInput:
        chat = super().chat_input()
        chat.fields["max_tokens"] = self.max_tokens
        sampling = {"stop": self.stop_sequences, "temperature": self.temperature, "top_p": self.top_p,
                    "top_k": self.top_k, "cache_salt": self.cache_salt, "vllm_xargs": self.vllm_xargs}
        chat.fields.update({name: value for name, value in sampling.items() if value is not None})
        return chat


class CountTokensRequest(Conversation, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """messages.count_tokens: the prompt alone."""


def check_block(block: ContentBlock, role: Role, where: str) -> None:
    if block.type in UNSERVED_BLOCKS:
        raise InvalidRequest(f"{block.type} blocks are not supported: {UNSERVED_BLOCKS[block.type]}", param=where)
    if block.type not in set(BlockType):
        raise InvalidRequest(f"unknown content block type {block.type!r}; this server takes "
                             f"{', '.join(sorted(BLOCKS_OF[role]))} blocks here", param=f"{where}.type")
    if block.type not in BLOCKS_OF[role]:
        raise InvalidRequest(f"{block.type} blocks are not allowed in a {role} message", param=where)
    required = {BlockType.TEXT: "text", BlockType.TOOL_USE: "id", BlockType.TOOL_RESULT: "tool_use_id",
                BlockType.THINKING: "thinking"}.get(BlockType(block.type))
    if required is not None and getattr(block, required) is None:
        raise InvalidRequest(f"a {block.type} block needs {required}", param=f"{where}.{required}")
    if block.type == BlockType.TOOL_USE and not block.name:
        raise InvalidRequest("a tool_use block needs a name", param=f"{where}.name")
    if block.type == BlockType.TOOL_RESULT and isinstance(block.content, list):
        for index, item in enumerate(block.content):
            if item.get("type") != BlockType.TEXT or not isinstance(item.get("text"), str):
                raise InvalidRequest(f"a tool_result's content takes text blocks only, not {item.get('type')!r}",
                                     param=f"{where}.content[{index}]")


def system_messages(system: str | list[ContentBlock] | None) -> list[dict[str, Any]]:
    """The top-level system prompt as one system message (vllm serve joins its blocks without a separator)."""
    if isinstance(system, str):
        return [{"role": Role.SYSTEM.value, "content": system}] if system else []
    text = "".join(block.text or "" for block in system or [] if not (block.text or "").startswith(BILLING_HEADER))
    return [{"role": Role.SYSTEM.value, "content": text}] if text else []


def openai_messages(messages: list[Message]) -> list[dict[str, Any]]:
    """Each message in OpenAI's format; a user message's tool results become tool messages before it."""
    converted: list[dict[str, Any]] = []
    for message in messages:
        if message.role == Role.SYSTEM:
            converted += system_messages(message.content)
            continue
        if isinstance(message.content, str):
            converted.append({"role": message.role.value, "content": message.content})
            continue
        entry: dict[str, Any] = {"role": message.role.value}
        texts: list[str] = []
        reasoning: list[str] = []
        calls: list[dict[str, Any]] = []
        for block in message.content:
            if block.type == BlockType.TEXT and block.text:
                texts.append(block.text)
            elif block.type == BlockType.THINKING and block.thinking is not None:
                reasoning.append(block.thinking)
            elif block.type == BlockType.TOOL_USE:
                calls.append({"id": block.id, "type": "function",
                              "function": {"name": block.name, "arguments": json.dumps(block.input or {})}})
            elif block.type == BlockType.TOOL_RESULT:
                converted.append({"role": "tool", "tool_call_id": block.tool_use_id,
                                  "content": tool_result_text(block.content)})
        if reasoning:
            entry["reasoning"] = "".join(reasoning)
        if calls:
            entry["tool_calls"] = calls
        if texts:
            entry["content"] = texts[0] if len(texts) == 1 else [{"type": "text", "text": t} for t in texts]
        if message.role == Role.ASSISTANT or "content" in entry:
            converted.append(entry)
    return converted


def tool_result_text(content: str | list[dict[str, Any]] | None) -> str:
    if isinstance(content, list):
        return "\n".join(item.get("text", "") for item in content)
    return content or ""
