"""Plain types the engine speaks: what to sample, what comes out of each step. No vLLM types leak past engine/."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

FinishReason = Literal["stop", "length", "abort"]


@dataclass(slots=True)
class SamplingOptions:
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    n: int = 1
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logprobs: int | None = None
    ignore_eos: bool = False
    min_tokens: int = 0


@dataclass(slots=True)
class Prompt:
    token_ids: list[int]
    # The rendered text, passed along so that vLLM does not decode the token ids back into it.
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
class ChoiceDelta:
    """New output of one choice since the previous step."""

    index: int
    text: str
    num_tokens: int
    finish_reason: FinishReason | None = None
    logprobs: list[TokenLogprob] | None = None


@dataclass(slots=True)
class StepOutput:
    choices: list[ChoiceDelta]


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
    """The engine refused the request's parameters."""


class ChatTemplateError(InvalidRequestError):
    """The model's chat template refused the messages (an order it does not allow, say)."""


class EngineUnavailableError(RuntimeError):
    """The engine is not running (not started, shut down, or dead)."""
