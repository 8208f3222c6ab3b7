"""The inference engine: vLLM's AsyncLLM (v1) wrapped for chat and completions, the same code on the CPU and CUDA
builds."""

from engine.chat import PreparedRequest
from engine.config import EngineConfig, EngineOptions
from engine.llm import ChatEngine
from engine.protocol import EngineClient
from engine.types import (
    Adapter,
    AdapterLoadError,
    ChatInput,
    ChatTemplateError,
    ChoiceDelta,
    CompletionInput,
    EngineStats,
    EngineUnavailableError,
    GenerationFailedError,
    InvalidRequestError,
    Prompt,
    PromptTooLongError,
    StepOutput,
    TokenLogprob,
    ToolCallDelta,
    ToolChoice,
)

__all__ = [
    "Adapter", "AdapterLoadError",
    "ChatEngine", "ChatInput", "ChatTemplateError", "ChoiceDelta", "CompletionInput", "EngineClient", "EngineConfig",
    "EngineOptions", "EngineStats", "EngineUnavailableError", "GenerationFailedError", "InvalidRequestError",
    "PreparedRequest", "Prompt", "PromptTooLongError", "StepOutput", "TokenLogprob", "ToolCallDelta", "ToolChoice",
]
