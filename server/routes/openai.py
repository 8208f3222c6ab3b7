"""The OpenAI-compatible API: POST /v1/chat/completions (streamed as SSE or not) and GET /v1/models."""

from __future__ import annotations

import time

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from server.protocol.chat import ChatCompletionRequest
from server.protocol.decode import decode_body
from server.routes.params import json_response
from server.state import principal_of, request_state, services
from server.streaming import EventStreamResponse, RouteResponse, cancel_on_disconnect
from server.telemetry.metrics import AbortReason, aborted_requests

STARTED_AT = int(time.time())
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that left; nobody reads it


async def chat_completions(request: Request) -> RouteResponse:
    body = decode_body(await request.body(), ChatCompletionRequest, empty_means=None)
    chat = services(request).chat
    completion = await chat.start(body, principal_of(request), request_state(request))
    if body.stream:
        return EventStreamResponse(chat.events(completion), finalize=completion.close)
    try:
        result = await cancel_on_disconnect(request.receive, lambda: chat.collect(completion))
    finally:
        await completion.close()
    if result is None:
        aborted_requests.labels(completion.model, AbortReason.CLIENT_DISCONNECT).inc()
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    return Response(msgspec.json.encode(result), media_type="application/json")


async def list_models(request: Request) -> RouteResponse:
    engine = services(request).engine
    return json_response({
        "object": "list",
        "data": [{
            "id": engine.model_name,
            "object": "model",
            "created": STARTED_AT,
            "owned_by": "codeface",
            "max_model_len": engine.max_model_len,
        }],
    })


routes: list[BaseRoute] = [
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/models", list_models, methods=["GET"]),
]
