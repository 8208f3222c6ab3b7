"""The answers of the Messages routes, as types: msgspec emits their JSON Schema for /openapi.json, and the tests
convert answers to them."""

from __future__ import annotations

from typing import Any, Literal

import msgspec


class Usage(msgspec.Struct):
    input_tokens: int
    output_tokens: int
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None


class ResponseBlock(msgspec.Struct):
    """text, thinking or tool_use."""

    type: Literal["text", "thinking", "tool_use"]
    text: str | None = None
    thinking: str | None = None
    signature: str | None = None
    id: str | None = None
    name: str | None = None
    input: dict[str, Any] | None = None


class MessageResponse(msgspec.Struct):
    id: str
    type: Literal["message"]
    role: Literal["assistant"]
    content: list[ResponseBlock]
    model: str
    stop_reason: Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"] | None
    stop_sequence: str | None
    usage: Usage


class TokenCount(msgspec.Struct):
    input_tokens: int


class AnthropicError(msgspec.Struct):
    type: str
    message: str


class AnthropicErrorEnvelope(msgspec.Struct):
    """Every error under /v1/messages: what the anthropic SDK reads."""

    type: Literal["error"]
    error: AnthropicError
