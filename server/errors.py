"""The one mapping from domain errors to HTTP: status, headers, and the JSON error body, in the dialect of the path
(Dialect, by DIALECT_PREFIXES). On the OpenAI routes the envelope the openai SDK reads, {"error": {message, type,
code, param, path}}; on /api/v1/ the seed's contract as well: code, message and path (with type and param) at the
top level, beside the same "error" object; under /v1/messages Anthropic's, {"type": "error", "error": {type,
message}}, with Anthropic's types and its 529 for an overloaded server."""

from __future__ import annotations

import logging
from collections.abc import Callable
from enum import StrEnum
from http import HTTPStatus

import msgspec
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope

from engine import EngineUnavailableError, GenerationFailedError, InvalidRequestError, PromptTooLongError
from server.exceptions import (
    AuthenticationFailed,
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    RateLimited,
    ServiceError,
    Unavailable,
)

logger = logging.getLogger(__name__)

# Every pooled connection stayed busy for the pool's timeout: overload, not a fault of this request.
DATABASE_BUSY = "the database is busy; retry shortly"
# A dependency that did not answer or refused the connection (a hung or stopped database): the server's fault, so
# 503 and a retry, never 500.
DEPENDENCY_DOWN = "a service this server depends on is not answering; retry shortly"
OUTAGE_ERRORS = (TimeoutError, ConnectionError, OperationalError, InterfaceError)
RETRY_SHORTLY_S = 2
# Errors that are no domain error but answer 503 with this fixed message (their own text, SQL and addresses, is not
# the client's business) and a Retry-After of this many seconds.
FIXED_ANSWERS: dict[type[Exception], tuple[str, int]] = {
    PoolTimeout: (DATABASE_BUSY, RETRY_SHORTLY_S),
    **{error: (DEPENDENCY_DOWN, RETRY_SHORTLY_S) for error in OUTAGE_ERRORS},
}

STATUS_OF: dict[type[Exception], HTTPStatus] = {
    InvalidRequest: HTTPStatus.BAD_REQUEST,
    AuthenticationFailed: HTTPStatus.UNAUTHORIZED,
    Forbidden: HTTPStatus.FORBIDDEN,
    NotFound: HTTPStatus.NOT_FOUND,
    Conflict: HTTPStatus.CONFLICT,
    PayloadTooLarge: HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    RateLimited: HTTPStatus.TOO_MANY_REQUESTS,
    Unavailable: HTTPStatus.SERVICE_UNAVAILABLE,
    # The engine's own errors, when a service lets one through unchanged.
    PromptTooLongError: HTTPStatus.BAD_REQUEST,
    InvalidRequestError: HTTPStatus.BAD_REQUEST,
    EngineUnavailableError: HTTPStatus.SERVICE_UNAVAILABLE,
    GenerationFailedError: HTTPStatus.INTERNAL_SERVER_ERROR,
    **{error: HTTPStatus.SERVICE_UNAVAILABLE for error in FIXED_ANSWERS},
}

ERROR_TYPES: dict[int, str] = {
    HTTPStatus.BAD_REQUEST: "invalid_request_error",
    HTTPStatus.UNAUTHORIZED: "authentication_error",
    HTTPStatus.FORBIDDEN: "permission_error",
    HTTPStatus.NOT_FOUND: "not_found_error",
    HTTPStatus.METHOD_NOT_ALLOWED: "invalid_request_error",
    HTTPStatus.CONFLICT: "conflict_error",
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE: "invalid_request_error",
    HTTPStatus.UNSUPPORTED_MEDIA_TYPE: "invalid_request_error",
    HTTPStatus.UNPROCESSABLE_ENTITY: "invalid_request_error",
    HTTPStatus.TOO_MANY_REQUESTS: "rate_limit_error",
    HTTPStatus.SERVICE_UNAVAILABLE: "service_unavailable",
}


class Dialect(StrEnum):
    OPENAI = "openai"
    SEED = "seed"
    ANTHROPIC = "anthropic"


SEED_PREFIX = "/api/v1/"
ANTHROPIC_PATH = "/v1/messages"
# A path's dialect: the first prefix that holds it (a prefix ending in "/" holds what is under it; one that does not
# holds itself and what is under it), else OpenAI's.
DIALECT_PREFIXES = ((SEED_PREFIX, Dialect.SEED), (ANTHROPIC_PATH, Dialect.ANTHROPIC))

# Anthropic's status for an overloaded API: its SDK retries it, and a client tells it from a failing replica (503).
ANTHROPIC_OVERLOADED = 529
ANTHROPIC_ERROR_TYPES: dict[int, str] = {
    HTTPStatus.BAD_REQUEST: "invalid_request_error",
    HTTPStatus.UNAUTHORIZED: "authentication_error",
    HTTPStatus.FORBIDDEN: "permission_error",
    HTTPStatus.NOT_FOUND: "not_found_error",
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE: "request_too_large",
    HTTPStatus.TOO_MANY_REQUESTS: "rate_limit_error",
    ANTHROPIC_OVERLOADED: "overloaded_error",
}


def dialect_of(path: str) -> Dialect:
    for prefix, dialect in DIALECT_PREFIXES:
        if path.startswith(prefix) and (prefix.endswith("/") or path == prefix or path[len(prefix)] == "/"):
            return dialect
    return Dialect.OPENAI


def status_of(error: Exception, dialect: Dialect = Dialect.OPENAI) -> int:
    if dialect == Dialect.ANTHROPIC and isinstance(error, Overloaded):
        return ANTHROPIC_OVERLOADED
    for cls in type(error).__mro__:
        if cls in STATUS_OF:
            return STATUS_OF[cls]
    return HTTPStatus.INTERNAL_SERVER_ERROR


def error_type(status_code: int) -> str:
    server_side = status_code >= HTTPStatus.INTERNAL_SERVER_ERROR
    return ERROR_TYPES.get(status_code, "server_error" if server_side else "invalid_request_error")


def anthropic_error_type(status_code: int) -> str:
    server_side = status_code >= HTTPStatus.INTERNAL_SERVER_ERROR
    return ANTHROPIC_ERROR_TYPES.get(status_code, "api_error" if server_side else "invalid_request_error")


def openai_body(status_code: int, message: str, path: str, param: str | None) -> dict[str, object]:
    return {"error": {"message": message, "type": error_type(status_code), "code": status_code, "param": param,
                      "path": path}}


def seed_body(status_code: int, message: str, path: str, param: str | None) -> dict[str, object]:
    error = {"message": message, "type": error_type(status_code), "code": status_code, "param": param, "path": path}
    return {**error, "error": error}


def anthropic_body(status_code: int, message: str, _path: str, param: str | None) -> dict[str, object]:
    """Anthropic's envelope has no param: the field is named in the message."""
    named = f"{param}: {message}" if param and param not in message else message
    return {"type": "error", "error": {"type": anthropic_error_type(status_code), "message": named}}


ERROR_BODIES: dict[Dialect, Callable[[int, str, str, str | None], dict[str, object]]] = {
    Dialect.OPENAI: openai_body,
    Dialect.SEED: seed_body,
    Dialect.ANTHROPIC: anthropic_body,
}


def error_body(status_code: int, message: str, *, path: str, param: str | None = None) -> dict[str, object]:
    return ERROR_BODIES[dialect_of(path)](status_code, message, path, param)


def error_response(status_code: int, message: str, *, path: str, param: str | None = None,
                   headers: dict[str, str] | None = None) -> Response:
    body = msgspec.json.encode(error_body(status_code, message, path=path, param=param))
    return Response(body, status_code=status_code, headers=headers, media_type="application/json")


def fixed_answer(error: Exception) -> tuple[str, int] | None:
    return next((FIXED_ANSWERS[cls] for cls in type(error).__mro__ if cls in FIXED_ANSWERS), None)


def error_headers(error: Exception) -> dict[str, str]:
    headers: dict[str, str] = {}
    if isinstance(error, ServiceError) and error.retry_after_s is not None:
        headers["Retry-After"] = str(error.retry_after_s)
    if (fixed := fixed_answer(error)) is not None:
        headers["Retry-After"] = str(fixed[1])
    if isinstance(error, AuthenticationFailed):
        headers["WWW-Authenticate"] = "Bearer"
    window_headers = getattr(error, "window_headers", None)
    if window_headers:
        headers.update(window_headers)
    return headers


def response_for(error: Exception, path: str) -> Response:
    """The response for a domain (or engine) error."""
    param = error.param if isinstance(error, ServiceError) else None
    message = fixed[0] if (fixed := fixed_answer(error)) is not None else str(error)
    return error_response(status_of(error, dialect_of(path)), message, path=path, param=param,
                          headers=error_headers(error))


def response_for_scope(scope: Scope, error: Exception) -> Response:
    """For pure ASGI middleware, which has a scope rather than a Request."""
    return response_for(error, scope.get("path", ""))


async def handle_service_error(request: Request, exc: Exception) -> Response:
    return response_for(exc, request.url.path)


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error_response(exc.status_code, str(exc.detail), path=request.url.path,
                          headers=dict(exc.headers) if exc.headers else None)


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    # ServerErrorMiddleware calls this and then re-raises, so uvicorn still logs the traceback. A mapped error
    # raised in a middleware (a pool timeout while authenticating) lands here too, and keeps its status.
    if status_of(exc) != HTTPStatus.INTERNAL_SERVER_ERROR:
        return response_for(exc, request.url.path)
    return error_response(HTTPStatus.INTERNAL_SERVER_ERROR, "internal server error", path=request.url.path)


EXCEPTION_HANDLERS = {
    ServiceError: handle_service_error,
    PromptTooLongError: handle_service_error,
    InvalidRequestError: handle_service_error,
    EngineUnavailableError: handle_service_error,
    GenerationFailedError: handle_service_error,
    PoolTimeout: handle_service_error,
    HTTPException: handle_http_exception,
    Exception: handle_unexpected,
}
