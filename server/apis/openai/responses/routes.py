"""OpenAI's Responses API: POST /v1/responses (a Response object, or OpenAI's semantic events with stream: true) and
POST /v1/responses/input_tokens. Errors in OpenAI's envelope, as on every /v1/ route but /v1/messages."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from starlette.requests import Request

from server.apis.decode import decode_body
from server.apis.endpoint import GENERATION_ERRORS, Endpoint, Method, Operation, Streams
from server.apis.openai.responses.protocol import InputTokensRequest, ResponsesRequest
from server.apis.openai.responses.schemas import InputTokens, ResponseObject
from server.apis.openai.routes import generation_request_id, respond
from server.apis.params import json_response
from server.state import principal_of, request_state, services
from server.streaming import EventStreamResponse, RouteResponse

RESPONSES_PATH = "/v1/responses"
INPUT_TOKENS_PATH = f"{RESPONSES_PATH}/input_tokens"
TAG = "openai"


@Operation(Method.POST, RESPONSES_PATH, "Create a response (OpenAI's Responses API)", TAG, response=ResponseObject,
           request=ResponsesRequest, streams=Streams.ON_REQUEST, errors=GENERATION_ERRORS)
async def create_response(request: Request) -> RouteResponse:
    body = decode_body(await request.body(), ResponsesRequest, empty_means=None)
    responses = services(request).responses
    state = request_state(request)
    if body.end_user is not None:
        state["end_user"] = body.end_user
    if body.background:
        return await create_in_background(request, body, state)
    started = await responses.start(body, principal_of(request), state, generation_request_id(request, body.request_id))
    events = responses.events(started) if body.stream else None
    return await respond(request, started, events, lambda: responses.collect(started))


async def create_in_background(request: Request, body: ResponsesRequest, state: dict[str, Any]) -> RouteResponse:
    """The Response at once (queued), or its events live with stream: true; the generation outlives either."""
    background = services(request).background_responses
    created = await background.create(body, principal_of(request), state,
                                      generation_request_id(request, body.request_id))
    if body.stream:
        following = background.listen(principal_of(request), created.run)
        return EventStreamResponse(following.events, finalize=following.close)
    return json_response(created.body)


@Operation(Method.POST, INPUT_TOKENS_PATH, "Count a response's input tokens (OpenAI's Responses API)", TAG,
           response=InputTokens, request=InputTokensRequest, errors=(HTTPStatus.BAD_REQUEST, HTTPStatus.NOT_FOUND))
async def input_tokens(request: Request) -> RouteResponse:
    body = decode_body(await request.body(), InputTokensRequest, empty_means=None)
    return json_response(await services(request).responses.input_tokens(body, principal_of(request)))


endpoints: tuple[Endpoint, ...] = (create_response, input_tokens)
