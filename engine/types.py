"""Plain types the engine speaks: what to generate, what comes out of each step. No vLLM types leak past engine/."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

FinishReason = Literal["stop", "length", "abort", "tool_calls", "error"]


class ToolChoice(StrEnum):
    NONE = "none"
    AUTO = "auto"
    REQUIRED = "required"
    NAMED = "named"


@dataclass(frozen=True, slots=True)
class Adapter:
    """A LoRA adapter served over the base model: its model name, its local folder (PEFT's layout) and the id the
    engine knows it by. The id is derived from the name and the folder, so that every API process and replica gives
    the same adapter the same id (and a name loaded again from another folder a new one: no stale cached weights)."""

    name: str
    path: str

    @property
    def lora_id(self) -> int:
        digest = hashlib.sha256(f"{self.name}\0{self.path}".encode()).digest()
        return int.from_bytes(digest[:4], "big") % LORA_ID_SPACE + 1


# vLLM's LoRA ids are positive ints (0 means "no adapter"); 31 bits keep them in any int32 the engine may use.
LORA_ID_SPACE = (1 << 31) - 1


@dataclass(slots=True)
class ChatInput:
    """A chat request as the engine takes it: OpenAI-format messages, and every other request field named as vLLM's
    ChatCompletionRequest names it (a field left unset is absent, so vLLM's default and the model's
    generation_config apply)."""

    messages: list[dict[str, Any]]
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class CompletionInput:
    """A completion request: one prompt (text or token ids) and the other fields, named as vLLM's CompletionRequest
    names them."""

    prompt: str | list[int]
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Prompt:
    token_ids: list[int]
    text: str | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


@dataclass(slots=True)
class TokenLogprob:
    token: str
    logprob: float
    top: list[tuple[str, float]]


@dataclass(slots=True)
class ToolCallDelta:
    """A piece of a tool call as OpenAI streams it: id, type and name first, argument fragments after."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str | None = None


@dataclass(slots=True)
class ChoiceDelta:
    """New output of one choice since the previous step: the generated text (`text`), and, when the request uses
    tools or the model a reasoning parser, what the parsers made of it (`content`, `reasoning`, `tool_calls`)."""

    index: int
    text: str
    num_tokens: int
    finish_reason: FinishReason | None = None
    logprobs: list[TokenLogprob] | None = None
    content: str | None = None
    reasoning: str | None = None
    tool_calls: list[ToolCallDelta] = field(default_factory=list)
    token_ids: list[int] | None = None
    stop_reason: int | str | None = None


@dataclass(slots=True)
class StepOutput:
    choices: list[ChoiceDelta]
    # Set on the first step: prompt tokens served from the prefix cache, and the prompt's logprobs if asked for.
    cached_tokens: int | None = None
    prompt_logprobs: list[dict[str, Any] | None] | None = None
    # Set on the first step: seconds the request waited in the engine's queue before it was first scheduled.
    queue_time_s: float | None = None


@dataclass(slots=True)
class EngineStats:
    requests_in_flight: int
    running: int | None = None
    waiting: int | None = None
    kv_cache_usage: float | None = None
    prefix_cache_hit_rate: float | None = None


class PromptTooLongError(ValueError):
    """The prompt plus the requested output does not fit the model's context."""


class InvalidRequestError(ValueError):
    """The engine refused the request's parameters. `param` names the field when vLLM says which."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ChatTemplateError(InvalidRequestError):
    """The model's chat template refused the messages (an order it does not allow, say)."""


class EngineUnavailableError(RuntimeError):
    """The engine is not running (not started, shut down, or dead)."""


class AdapterLoadError(ValueError):
    """The engine could not load a LoRA adapter (no adapter in the folder, a malformed one, a rank above
    max_lora_rank, LoRA not enabled); the message is the engine's."""


class GenerationFailedError(RuntimeError):
    """The engine failed this request after accepting it (vLLM's EngineGenerateError)."""
