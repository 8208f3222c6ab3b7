"""The engine's refusals of a request as the domain's errors (server.exceptions), the same on every route."""

from __future__ import annotations

from engine import ChatTemplateError, InvalidRequestError, PromptTooLongError
from server.adapters.catalog import ModelCatalog, ServedModel
from server.exceptions import InvalidRequest
from server.security.auth import Principal


def served_model(models: ModelCatalog, principal: Principal | None, requested: str | None) -> ServedModel:
    """The model a request names (None: the base model): the base model or one of its adapters, when served and the
    caller may use it; any other is a 404 (server.adapters.catalog)."""
    return models.resolve(principal, requested)


def engine_refusal(exc: PromptTooLongError | InvalidRequestError, param: str) -> InvalidRequest:
    """The engine's refusal of a request as the domain error. `param` is what the messages (or prompt) are called
    in this request; it is named unless the engine named a sampling field."""
    named = exc.param if isinstance(exc, InvalidRequestError) and not isinstance(exc, ChatTemplateError) else None
    return InvalidRequest(str(exc), param=named or param)
