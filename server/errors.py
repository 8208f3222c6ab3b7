"""One JSON error envelope for every error, readable by the openai SDK: {"error": {message, type, code, param, path}}."""

from __future__ import annotations

import logging

import msgspec
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope

logger = logging.getLogger(__name__)

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}


class APIError(Exception):
    """An error a route raises on purpose; rendered as the envelope with its status."""

    def __init__(self, status_code: int, message: str, *, param: str | None = None,
                 error_type: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.param = param
        self.error_type = error_type or ERROR_TYPES.get(status_code, "server_error" if status_code >= 500 else
                                                        "invalid_request_error")
        self.headers = headers


def error_body(status_code: int, message: str, *, path: str, param: str | None = None,
               error_type: str | None = None) -> dict[str, dict[str, object]]:
    return {"error": {
        "message": message,
        "type": error_type or ERROR_TYPES.get(status_code, "server_error" if status_code >= 500 else "api_error"),
        "code": status_code,
        "param": param,
        "path": path,
    }}


def error_response(status_code: int, message: str, *, path: str, param: str | None = None,
                   error_type: str | None = None, headers: dict[str, str] | None = None) -> Response:
    body = msgspec.json.encode(error_body(status_code, message, path=path, param=param, error_type=error_type))
    return Response(body, status_code=status_code, headers=headers, media_type="application/json")


def error_for_scope(scope: Scope, status_code: int, message: str, **kwargs: object) -> Response:
    """For pure ASGI middleware, which has a scope rather than a Request."""
    return error_response(status_code, message, path=scope.get("path", ""), **kwargs)  # type: ignore[arg-type]


async def handle_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return error_response(exc.status_code, exc.message, path=request.url.path, param=exc.param,
                          error_type=exc.error_type, headers=exc.headers)


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error_response(exc.status_code, str(exc.detail), path=request.url.path, headers=exc.headers)


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    # ServerErrorMiddleware calls this and then re-raises, so uvicorn still logs the traceback.
    return error_response(500, "internal server error", path=request.url.path)


EXCEPTION_HANDLERS = {
    APIError: handle_api_error,
    HTTPException: handle_http_exception,
    Exception: handle_unexpected,
}
