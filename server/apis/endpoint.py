"""One declaration per route, next to its handler: the router mounts it and /openapi.json documents it, so the
path, method, success status, body types, parameters and links are written once."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from http import HTTPStatus
from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from server.apis.params import IntQuery, Param
from server.streaming import RouteResponse

Handler = Callable[[Request], Awaitable[RouteResponse]]

# What a route that generates may answer: a bad body (400), an unknown model or conversation (404), a busy
# conversation or a full queue (409), a prompt too large (413), a spent budget (429), the engine failing (500) or
# gone (503).
GENERATION_ERRORS = (HTTPStatus.BAD_REQUEST, HTTPStatus.NOT_FOUND, HTTPStatus.CONFLICT,
                     HTTPStatus.REQUEST_ENTITY_TOO_LARGE, HTTPStatus.TOO_MANY_REQUESTS,
                     HTTPStatus.INTERNAL_SERVER_ERROR, HTTPStatus.SERVICE_UNAVAILABLE)


class Method(StrEnum):
    GET = "get"
    POST = "post"
    PATCH = "patch"
    DELETE = "delete"


class Streams(StrEnum):
    """Whether the success answer is text/event-stream: never, when the body asks (stream: true), or always."""

    NEVER = "never"
    ON_REQUEST = "on_request"
    ALWAYS = "always"


def operation_id(method: Method, path: str) -> str:
    return f"{method}_{re.sub(r'[^a-z0-9]+', '_', path)}"


@dataclass(frozen=True)
class Link:
    """An OpenAPI link from a success answer to the operation `method path`, its parameters and body taken from
    the request or the answer by runtime expressions ($response.body#/id, $request.path.conversation_id, ...);
    the stateful API fuzzing follows them."""

    name: str
    method: Method
    path: str
    parameters: dict[str, str] = field(default_factory=dict)
    request_body: dict[str, str] | None = None

    def document(self) -> dict[str, Any]:
        body: dict[str, Any] = {"operationId": operation_id(self.method, self.path), "parameters": self.parameters}
        if self.request_body is not None:
            body["requestBody"] = self.request_body
        return body


@dataclass(frozen=True)
class Operation:
    """What a route does, as /openapi.json says it: what it answers on success (`ok`, `response`, or plain `text`),
    what body it reads (JSON `request` or a `form`), its optional parameters, the errors it answers beyond those
    every route may, and its links. Used as a decorator, it declares the handler's route."""

    method: Method
    path: str
    summary: str
    tag: str
    ok: HTTPStatus = HTTPStatus.OK
    response: type | None = None
    text: str = ""  # the success answer is text/plain, described so
    request: type | None = None
    form: type | None = None
    body_optional: bool = False
    streams: Streams = Streams.NEVER
    public: bool = False
    errors: tuple[int, ...] = (HTTPStatus.BAD_REQUEST,)  # HTTPStatus, or a dialect's own (Anthropic's 529)
    parameters: tuple[Param | IntQuery, ...] = ()
    links: tuple[Link, ...] = ()
    # The JSON Schema of path parameters that are not UUIDs (OpenAI's prefixed ids), by name.
    path_schemas: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def operation_id(self) -> str:
        return operation_id(self.method, self.path)

    def __call__(self, handler: Handler) -> Endpoint:
        return Endpoint(self, handler)


@dataclass(frozen=True)
class Endpoint:
    """A handler and its operation: the router mounts it, the OpenAPI document describes it."""

    operation: Operation
    handler: Handler

    @property
    def method(self) -> Method:
        return self.operation.method

    @property
    def path(self) -> str:
        return self.operation.path

    @property
    def ok(self) -> HTTPStatus:
        """The declared success status, which the handler answers with."""
        return self.operation.ok

    def route(self) -> Route:
        return Route(self.path, self.handler, methods=[self.method.upper()])
