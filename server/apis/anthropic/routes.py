"""Anthropic's Messages API: POST /v1/messages (a message, or its events with stream: true) and
POST /v1/messages/count_tokens. Credentials as Anthropic's clients send them (x-api-key) or as a bearer token."""

from __future__ import annotations

from starlette.requests import Request
from starlette.routing import BaseRoute, Route

from server.apis.anthropic.protocol import CountTokensRequest, MessagesRequest
from server.apis.decode import decode_body
from server.apis.openai.routes import generation_request_id, respond
from server.apis.params import json_response
from server.errors import ANTHROPIC_PATH
from server.state import principal_of, request_state, services
from server.streaming import RouteResponse

COUNT_TOKENS_PATH = f"{ANTHROPIC_PATH}/count_tokens"


async def create_message(request: Request) -> RouteResponse:
    body = decode_body(await request.body(), MessagesRequest, empty_means=None)
    messages = services(request).messages
    state = request_state(request)
    if body.end_user is not None:
        state["end_user"] = body.end_user
    started = await messages.start(body, principal_of(request), state, generation_request_id(request, None))
    return await respond(request, started, messages.events(started) if body.stream else None,
                         lambda: messages.collect(started))


async def count_tokens(request: Request) -> RouteResponse:
    body = decode_body(await request.body(), CountTokensRequest, empty_means=None)
    return json_response(await services(request).messages.count_tokens(body))


routes: list[BaseRoute] = [
    Route(ANTHROPIC_PATH, create_message, methods=["POST"]),
    Route(COUNT_TOKENS_PATH, count_tokens, methods=["POST"]),
]
