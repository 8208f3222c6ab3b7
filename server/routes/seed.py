"""The seed's shapes: POST /api/v1/chat {"message", "conversation_id"?} and GET /api/v1/stream/{conversation_id}."""

from __future__ import annotations

from starlette.requests import Request
from starlette.routing import BaseRoute, Route

from server.exceptions import NotFound
from server.protocol.conversations import NewMessage, SeedChat
from server.protocol.decode import decode_body
from server.routes.conversations import owner, reply
from server.routes.params import last_event_id, parse_uuid, path_uuid
from server.state import services
from server.streaming import EventStreamResponse, RouteResponse


async def seed_chat(request: Request) -> RouteResponse:
    """Start or continue a conversation with one message."""
    spec = decode_body(await request.body(), SeedChat)
    existing = parse_uuid(spec.conversation_id) if spec.conversation_id is not None else None
    if spec.conversation_id is not None and existing is None:
        raise NotFound("no such conversation", param="conversation_id")
    conversation_id = await services(request).conversations.conversation_for_seed(owner(request), existing,
                                                                                  spec.message)
    return await reply(request, conversation_id, NewMessage(content=spec.message, stream=spec.stream))


async def seed_stream(request: Request) -> RouteResponse:
    """The reply in progress, or the next one."""
    conversation_id = path_uuid(request, "conversation_id")
    message_id, events = await services(request).conversations.follow_conversation(
        owner(request), conversation_id, last_event_id(request))
    return EventStreamResponse(events, headers={"X-Message-ID": str(message_id)} if message_id else None)


routes: list[BaseRoute] = [
    Route("/api/v1/chat", seed_chat, methods=["POST"]),
    Route("/api/v1/stream/{conversation_id}", seed_stream, methods=["GET"]),
]
