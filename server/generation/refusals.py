"""The engine's refusals of a request as the domain's errors (server.exceptions), the same on every route."""

from __future__ import annotations

from engine import ChatTemplateError, EngineClient, InvalidRequestError, PromptTooLongError
from server.exceptions import InvalidRequest, NotFound


def served_model(engine: EngineClient, requested: str | None) -> str:
    """The model a request names, when this server serves it (None: the one it serves); any other is a 404."""
    if requested is not None and requested != engine.model_name:
        raise NotFound(f"the model {requested!r} does not exist; this server serves {engine.model_name!r}",
                       param="model")
    return engine.model_name


def engine_refusal(exc: PromptTooLongError | InvalidRequestError, param: str) -> InvalidRequest:
    """The engine's refusal of a request as the domain error. `param` is what the messages (or prompt) are called
    in this request; it is named unless the engine named a sampling field."""
    named = exc.param if isinstance(exc, InvalidRequestError) and not isinstance(exc, ChatTemplateError) else None
    return InvalidRequest(str(exc), param=named or param)
