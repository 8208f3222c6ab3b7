"""The inference engine: vLLM's AsyncLLM (v1) wrapped for chat, the same code on the CPU and CUDA builds."""

from engine.config import EngineConfig, EngineOptions
from engine.llm import ChatEngine
from engine.types import (
    ChatTemplateError,
    ChoiceDelta,
    EngineStats,
    EngineUnavailableError,
    InvalidRequestError,
    Prompt,
    PromptTooLongError,
    SamplingOptions,
    StepOutput,
    TokenLogprob,
)

__all__ = [
    "ChatEngine", "ChatTemplateError", "ChoiceDelta", "EngineConfig", "EngineOptions", "EngineStats",
    "EngineUnavailableError", "InvalidRequestError", "Prompt", "PromptTooLongError", "SamplingOptions", "StepOutput",
    "TokenLogprob",
]
