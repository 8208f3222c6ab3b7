"""vLLM's POST /tokenize and POST /detokenize: exact token counts for prompts and chats, as vllm serve answers."""

from __future__ import annotations

from starlette.requests import Request
from starlette.routing import BaseRoute, Route

from server.protocol.decode import decode_body
from server.protocol.tokenize import DetokenizeRequest, TokenizeRequest
from server.routes.params import json_response
from server.state import services
from server.streaming import RouteResponse


async def tokenize(request: Request) -> RouteResponse:
    body = decode_body(await request.body(), TokenizeRequest, empty_means=None)
    result = await services(request).tokenization.tokenize(body)
    return json_response(result)


async def detokenize(request: Request) -> RouteResponse:
    body = decode_body(await request.body(), DetokenizeRequest, empty_means=None)
    return json_response(await services(request).tokenization.detokenize(body))


routes: list[BaseRoute] = [
    Route("/tokenize", tokenize, methods=["POST"]),
    Route("/detokenize", detokenize, methods=["POST"]),
]
