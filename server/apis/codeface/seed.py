"""The seed's contract, kept beside the conversations API: POST /api/v1/chat (a message, as JSON or as query
parameters, answered 200 with the reply, or streamed) and GET /api/v1/stream/{conversation_id}, framed for a
browser's EventSource.onmessage."""

from __future__ import annotations

from http import HTTPStatus

import msgspec
from starlette.requests import Request

from server.apis.codeface.conversations.protocol import NewMessage, SeedChat
from server.apis.codeface.conversations.routes import owner, reply
from server.apis.decode import EMPTY_OBJECT, decode_body
from server.apis.endpoint import GENERATION_ERRORS, Endpoint, Method, Operation, Streams
from server.apis.params import LAST_EVENT_ID_PARAMS, Param, last_event_id, parse_uuid, path_uuid
from server.exceptions import NotFound
from server.openapi.schemas import ReplyResult
from server.sse import Framing
from server.state import principal_of, services
from server.streaming import EventStreamResponse, RouteResponse

TAG = "seed"
# The message as query parameters, as the seed's FastAPI signature took them.
QUERY_PARAMS = (Param("message", {"type": "string", "minLength": 1}), Param("conversation_id", {"type": "string"}),
                Param("stream", {"type": "string", "enum": ["true", "false"]}))
QUERY_FIELDS = tuple(param.name for param in QUERY_PARAMS)
TRUE_WORDS = ("1", "true", "yes")


def seed_body(request: Request, body: bytes) -> SeedChat:
    """The JSON body, or, as the seed's FastAPI signature took them, query parameters."""
    if body.strip() or not any(name in request.query_params for name in QUERY_FIELDS):
        return decode_body(body, SeedChat)
    query = request.query_params
    fields: dict[str, object] = {name: query[name] for name in ("message", "conversation_id") if name in query}
    if "stream" in query:
        fields["stream"] = query["stream"].lower() in TRUE_WORDS
    return decode_body(msgspec.json.encode(fields) if fields else EMPTY_OBJECT, SeedChat)


@Operation(Method.POST, "/api/v1/chat", "The seed's chat: start or continue a conversation with one message", TAG,
           response=ReplyResult, request=SeedChat, streams=Streams.ON_REQUEST, body_optional=True,
           errors=GENERATION_ERRORS, parameters=QUERY_PARAMS)
async def seed_chat(request: Request) -> RouteResponse:
    """Start or continue a conversation with one message; 200 with the reply, as the seed answered."""
    spec = seed_body(request, await request.body())
    existing = parse_uuid(spec.conversation_id) if spec.conversation_id is not None else None
    if spec.conversation_id is not None and existing is None:
        raise NotFound("no such conversation", param="conversation_id")
    conversation_id = await services(request).conversations.conversation_for_seed(owner(request), existing,
                                                                                  spec.message)
    return await reply(request, conversation_id, NewMessage(content=spec.message, stream=spec.stream),
                       ok=seed_chat.ok, framing=Framing.PLAIN)


@Operation(Method.GET, "/api/v1/stream/{conversation_id}",
           "The seed's stream: the reply in progress, the latest, or the next (EventSource.onmessage)", TAG,
           streams=Streams.ALWAYS, errors=(HTTPStatus.BAD_REQUEST, HTTPStatus.NOT_FOUND),
           parameters=LAST_EVENT_ID_PARAMS)
async def seed_stream(request: Request) -> RouteResponse:
    """The reply in progress, the latest one if it has finished, or else the next one."""
    conversation_id = path_uuid(request, "conversation_id")
    following = await services(request).conversations.follow_conversation(
        principal_of(request), conversation_id, last_event_id(request))
    headers = {"X-Message-ID": str(following.message_id)} if following.message_id else None
    return EventStreamResponse(following.events, headers=headers, finalize=following.close)


endpoints: tuple[Endpoint, ...] = (seed_chat, seed_stream)
