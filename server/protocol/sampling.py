"""The one set of sampling fields, with their bounds and cross-field checks, shared by /v1/chat/completions and
the conversation routes; `sampling_options` turns them into the engine's SamplingOptions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import msgspec
from msgspec import Meta

from engine import SamplingOptions
from server.exceptions import InvalidRequest
from server.protocol.decode import INT32_MAX, Count, PositiveInt, Seed

Probability = Annotated[float, Meta(ge=0.0, le=1.0)]
Temperature = Annotated[float, Meta(ge=0.0, le=2.0)]
TopP = Annotated[float, Meta(gt=0.0, le=1.0)]
Penalty = Annotated[float, Meta(ge=-2.0, le=2.0)]

MAX_CHOICES = 16
MAX_STOP_SEQUENCES = 16
MAX_TOP_LOGPROBS = 20
# vLLM's top_k: -1 (or 0) means "no top-k".
TOP_K_DISABLED = -1


@dataclass(frozen=True, slots=True)
class SamplingDefaults:
    """What the server fills in for fields a request leaves out."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int | None = None


class SamplingFields(msgspec.Struct, frozen=True, kw_only=True):
    """OpenAI's sampling fields and vLLM's extensions (load generators, vllm bench serve among them, send these)."""

    max_tokens: PositiveInt | None = None
    max_completion_tokens: PositiveInt | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    stop: str | Annotated[list[str], Meta(max_length=MAX_STOP_SEQUENCES)] | None = None
    seed: Seed | None = None
    n: Annotated[int, Meta(ge=1, le=MAX_CHOICES)] = 1
    presence_penalty: Penalty = 0.0
    frequency_penalty: Penalty = 0.0
    logprobs: bool = False
    top_logprobs: Annotated[int, Meta(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    ignore_eos: bool = False
    top_k: Annotated[int, Meta(ge=TOP_K_DISABLED, le=INT32_MAX)] | None = None
    min_tokens: Count = 0
    repetition_penalty: Annotated[float, Meta(gt=0.0, le=2.0)] | None = None

    def __post_init__(self) -> None:
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidRequest("top_logprobs requires logprobs to be true", param="top_logprobs")
        if any(not sequence for sequence in self.stop_sequences):
            raise InvalidRequest("stop sequences must not be empty strings", param="stop")

    @property
    def stop_sequences(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def sampling_options(self, defaults: SamplingDefaults) -> SamplingOptions:
        return SamplingOptions(
            max_tokens=self.max_completion_tokens or self.max_tokens or defaults.max_tokens,
            temperature=defaults.temperature if self.temperature is None else self.temperature,
            top_p=defaults.top_p if self.top_p is None else self.top_p,
            top_k=0 if self.top_k in (None, TOP_K_DISABLED) else self.top_k,
            n=self.n,
            seed=self.seed,
            stop=self.stop_sequences,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            repetition_penalty=1.0 if self.repetition_penalty is None else self.repetition_penalty,
            logprobs=(self.top_logprobs or 0) if self.logprobs else None,
            ignore_eos=self.ignore_eos,
            min_tokens=self.min_tokens,
        )
