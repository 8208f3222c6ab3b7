"""The OpenAI-compatible API: POST /v1/chat/completions and POST /v1/completions (streamed as SSE or not),
GET /v1/models with vLLM's fields, and vLLM's POST /tokenize and POST /detokenize (exact token counts)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any, Protocol

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from server.apis.decode import decode_body
from server.apis.endpoint import GENERATION_ERRORS, Endpoint, Method, Operation, Streams
from server.apis.openai.chat_completions.protocol import ChatCompletionRequest
from server.apis.openai.chunks import stream_error_framing
from server.apis.openai.completions.protocol import CompletionRequest
from server.apis.openai.tokenize.protocol import DetokenizeRequest, TokenizeRequest
from server.apis.params import CLIENT_CLOSED_REQUEST, json_response
from server.openapi.schemas import ChatCompletion, Completion, DetokenizeResponse, ModelList, TokenizeResponse
from server.sse import EventStream
from server.state import principal_of, request_state, services
from server.streaming import EventStreamResponse, RouteResponse, cancel_on_disconnect
from server.telemetry.metrics import AbortReason, aborted_requests
from server.telemetry.request_ids import client_request_id

STARTED_AT = int(time.time())
MODEL_PERMISSION_ID = uuid.uuid4().hex
TOKENIZE_ERRORS = (HTTPStatus.BAD_REQUEST, HTTPStatus.NOT_FOUND)


def generation_request_id(request: Request, body_request_id: str | None) -> str:
    """As vllm serve: the client's X-Request-ID, else the body's request_id, else a new one."""
    return client_request_id(request.scope) or body_request_id or uuid.uuid4().hex


class Started(Protocol):
    """A started chat completion or completion: what the response needs of it."""

    model: str

    async def close(self) -> None: ...


async def respond(request: Request, started: Started, events: EventStream | None,
                  collect: Callable[[], Awaitable[dict[str, Any]]]) -> RouteResponse:
    """The stream (closed with the response), or the whole answer unless the client left first (499)."""
    if events is not None:
        return EventStreamResponse(events, finalize=started.close)
    try:
        result = await cancel_on_disconnect(request.receive, collect)
    finally:
        await started.close()
    if result is None:
        aborted_requests.labels(started.model, AbortReason.CLIENT_DISCONNECT).inc()
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    return Response(msgspec.json.encode(result), media_type="application/json")


@Operation(Method.POST, "/v1/chat/completions", "Create a chat completion (OpenAI's API, as vllm serve extends it)",
           "openai", response=ChatCompletion, request=ChatCompletionRequest, streams=Streams.ON_REQUEST,
           errors=GENERATION_ERRORS)
async def chat_completions(request: Request) -> RouteResponse:
    body = decode_body(await request.body(), ChatCompletionRequest, empty_means=None)
    chat = services(request).chat
    state = request_state(request)
    if body.user is not None:
        state["end_user"] = body.user
    completion = await chat.start(body, principal_of(request), state,
                                  generation_request_id(request, body.request_id))
    events = chat.events(completion, stream_error_framing(request.url.path)) if body.stream else None
    return await respond(request, completion, events,
                         lambda: chat.collect(completion))


@Operation(Method.POST, "/v1/completions", "Create a completion (OpenAI's API, as vllm serve extends it)", "openai",
           response=Completion, request=CompletionRequest, streams=Streams.ON_REQUEST, errors=GENERATION_ERRORS)
async def completions(request: Request) -> RouteResponse:
    body = decode_body(await request.body(), CompletionRequest, empty_means=None)
    service = services(request).completions
    state = request_state(request)
    if body.user is not None:
        state["end_user"] = body.user
    run = await service.start(body, principal_of(request), state, generation_request_id(request, body.request_id))
    events = service.events(run, stream_error_framing(request.url.path)) if body.stream else None
    return await respond(request, run, events, lambda: service.collect(run))


@Operation(Method.GET, "/v1/models", "List the models the caller may use: the base model and its LoRA adapters",
           "openai", response=ModelList, errors=())
async def list_models(request: Request) -> RouteResponse:
    """vLLM's model cards: id, root (the model's or the adapter's folder), parent (an adapter's base model),
    max_model_len and a permission entry."""
    held = services(request)
    return json_response({
        "object": "list",
        "data": [{
            "id": card.id,
            "object": "model",
            "created": STARTED_AT,
            "owned_by": "codeface",
            "root": card.root,
            "parent": card.parent,
            "max_model_len": held.engine.max_model_len,
            "permission": [{
                "id": f"modelperm-{MODEL_PERMISSION_ID}", "object": "model_permission", "created": STARTED_AT,
                "allow_create_engine": False, "allow_sampling": True, "allow_logprobs": True,
                "allow_search_indices": False, "allow_view": True, "allow_fine_tuning": False,
                "organization": "*", "group": None, "is_blocking": False,
            }],
        } for card in held.models.cards(principal_of(request))],
    })


@Operation(Method.POST, "/tokenize", "Tokenize a prompt or a chat (vLLM's shapes)", "vllm", response=TokenizeResponse,
           request=TokenizeRequest, errors=TOKENIZE_ERRORS)
async def tokenize(request: Request) -> RouteResponse:
    body = decode_body(await request.body(), TokenizeRequest, empty_means=None)
    return json_response(await services(request).tokenization.tokenize(body, principal_of(request)))


@Operation(Method.POST, "/detokenize", "Turn token ids back into text (vLLM's shapes)", "vllm",
           response=DetokenizeResponse, request=DetokenizeRequest, errors=TOKENIZE_ERRORS)
async def detokenize(request: Request) -> RouteResponse:
    body = decode_body(await request.body(), DetokenizeRequest, empty_means=None)
    return json_response(await services(request).tokenization.detokenize(body, principal_of(request)))


endpoints: tuple[Endpoint, ...] = (chat_completions, completions, list_models, tokenize, detokenize)
