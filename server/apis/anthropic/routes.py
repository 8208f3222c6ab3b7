"""Anthropic's Messages API: POST /v1/messages (a message, or its events with stream: true) and
POST /v1/messages/count_tokens. Credentials as Anthropic's clients send them (x-api-key) or as a bearer token."""

from __future__ import annotations

from http import HTTPStatus

from starlette.requests import Request

from server.apis.anthropic.protocol import CountTokensRequest, MessagesRequest
from server.apis.anthropic.schemas import MessageResponse, TokenCount
from server.apis.anthropic.serving import Event, event
from server.apis.decode import decode_body
from server.apis.endpoint import GENERATION_ERRORS, Endpoint, Method, Operation, Streams
from server.apis.openai.chunks import StreamErrorFraming
from server.apis.openai.routes import generation_request_id, respond
from server.apis.params import json_response
from server.errors import ANTHROPIC_OVERLOADED, ANTHROPIC_PATH, Dialect, error_body, status_of
from server.state import principal_of, request_state, services
from server.streaming import RouteResponse

COUNT_TOKENS_PATH = f"{ANTHROPIC_PATH}/count_tokens"
TAG = "anthropic"


def stream_error_event(path: str) -> StreamErrorFraming:
    """An error after the first event: Anthropic's error event, with the body the route would have answered."""

    def framed(error: Exception) -> bytes:
        return event(Event.ERROR, error_body(status_of(error, Dialect.ANTHROPIC), str(error), path=path))

    return framed


@Operation(Method.POST, ANTHROPIC_PATH, "Create a message (Anthropic's Messages API, as vllm serve serves it)", TAG,
           response=MessageResponse, request=MessagesRequest, streams=Streams.ON_REQUEST,
           errors=(*GENERATION_ERRORS, ANTHROPIC_OVERLOADED))
async def create_message(request: Request) -> RouteResponse:
    body = decode_body(await request.body(), MessagesRequest, empty_means=None)
    messages = services(request).messages
    state = request_state(request)
    if body.end_user is not None:
        state["end_user"] = body.end_user
    started = await messages.start(body, principal_of(request), state, generation_request_id(request, None))
    events = messages.events(started, stream_error_event(request.url.path)) if body.stream else None
    return await respond(request, started, events,
                         lambda: messages.collect(started))


@Operation(Method.POST, COUNT_TOKENS_PATH, "Count a message's prompt tokens (Anthropic's API)", TAG,
           response=TokenCount, request=CountTokensRequest, errors=(HTTPStatus.BAD_REQUEST, HTTPStatus.NOT_FOUND))
async def count_tokens(request: Request) -> RouteResponse:
    body = decode_body(await request.body(), CountTokensRequest, empty_means=None)
    return json_response(await services(request).messages.count_tokens(body, principal_of(request)))


endpoints: tuple[Endpoint, ...] = (create_message, count_tokens)
