"""The one translation of vLLM's errors into the engine's plain ones (engine.types): every call into vLLM that can
refuse a request runs inside vllm_errors(stage), and the stage says what a refusal there means."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum

from engine.types import (
    ChatTemplateError,
    EngineUnavailableError,
    GenerationFailedError,
    InvalidRequestError,
    PromptTooLongError,
)

# vLLM names these parameters when a prompt does not fit the context.
CONTEXT_PARAMETERS = frozenset({"input_tokens", "input_text"})
ENGINE_DEAD = "the engine has stopped after an error"
TEMPLATE_REFUSED = "the model's chat template rejected these messages: {}"


class Stage(StrEnum):
    """Where in a request's life vLLM raised: what the same exception means depends on it."""

    CHAT_SCHEMA = "chat schema"  # vLLM's ChatCompletionRequest validating the request's fields
    COMPLETION_SCHEMA = "completion schema"  # vLLM's CompletionRequest validating them
    PARAMS = "params"  # tokenization or sampling parameters, and handing the request to the engine
    CHAT_TEMPLATE = "chat template"  # rendering the messages with the model's chat template
    PROMPT = "prompt"  # rendering a completion's prompt
    STREAM = "stream"  # the engine's steps of an accepted request


def vllm_error_param(exc: BaseException) -> str | None:
    """The request field vLLM blames, when it names one."""
    parameter = getattr(exc, "parameter", None)
    return parameter if isinstance(parameter, str) else None


def translate(exc: Exception, stage: Stage) -> Exception | None:
    """The engine's error for a vLLM exception raised at `stage`, or None when it is not one the engine maps."""
    from pydantic import ValidationError
    from vllm.exceptions import VLLMClientError
    from vllm.v1.engine.exceptions import EngineDeadError

    if isinstance(exc, EngineDeadError):
        return EngineUnavailableError(ENGINE_DEAD)
    if isinstance(exc, VLLMClientError):
        param = vllm_error_param(exc)
        if stage in (Stage.CHAT_TEMPLATE, Stage.PROMPT) and param in CONTEXT_PARAMETERS:
            return PromptTooLongError(str(exc))
        if stage == Stage.CHAT_TEMPLATE:
            return ChatTemplateError(str(exc), "messages")
        return InvalidRequestError(str(exc), param or ("prompt" if stage == Stage.PROMPT else None))
    if isinstance(exc, ValidationError) and stage in (Stage.CHAT_SCHEMA, Stage.COMPLETION_SCHEMA):
        first = exc.errors()[0]
        location = ".".join(str(part) for part in first["loc"])
        message = f"{first['msg']} (at {location})" if stage == Stage.CHAT_SCHEMA else first["msg"]
        return InvalidRequestError(message, location or None)
    if isinstance(exc, (ValueError, TypeError)):
        if stage == Stage.CHAT_TEMPLATE:
            return ChatTemplateError(TEMPLATE_REFUSED.format(exc), "messages")
        if stage == Stage.PARAMS:
            return InvalidRequestError(str(exc))
    if stage == Stage.STREAM:
        return GenerationFailedError(f"generation failed: {type(exc).__name__}")
    return None


@contextmanager
def vllm_errors(stage: Stage) -> Iterator[None]:
    """Raise the engine's error in place of the vLLM one; anything else (cancellation included) passes through.
    A generation failure keeps vLLM's exception as its cause, for the log."""
    try:
        yield
    except Exception as exc:
        mapped = translate(exc, stage)
        if mapped is None:
            raise
        raise mapped from (exc if isinstance(mapped, GenerationFailedError) else None)
