"""The conversations API under /api/v1/conversations: history kept server-side, replies streamed over SSE and
resumable."""

from __future__ import annotations

import uuid

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from server.apis.codeface.conversations.protocol import (
    NewConversation,
    NewMessage,
    Rename,
    conversation_view,
    decode_cursor,
    encode_cursor,
    message_view,
)
from server.apis.decode import INT32_MAX, decode_body
from server.apis.params import int_query, json_response, last_event_id, parse_uuid, path_uuid
from server.conversations.service import Started
from server.sse import Framing
from server.state import principal_of, request_state, services
from server.streaming import EventStreamResponse, RouteResponse, cancel_on_disconnect

API = "/api/v1/conversations"
DEFAULT_PAGE, MAX_PAGE = 20, 100
DEFAULT_MESSAGES, MAX_MESSAGES = 50, 500
CLIENT_CLOSED_REQUEST = 499
CREATED = 201


def owner(request: Request) -> uuid.UUID:
    return principal_of(request).user_id


def reply_headers(conversation_id: uuid.UUID, started: Started) -> dict[str, str]:
    return {"X-Conversation-ID": str(conversation_id), "X-Message-ID": str(started.run.message_id),
            "X-Dropped-Turns": str(started.dropped_turns)}


async def create_conversation(request: Request) -> RouteResponse:
    spec = decode_body(await request.body(), NewConversation)
    conversation = await services(request).conversations.create(owner(request), spec.title)
    return json_response(conversation_view(conversation), status_code=201)


async def list_conversations(request: Request) -> RouteResponse:
    limit = int_query(request, "limit", DEFAULT_PAGE, 1, MAX_PAGE)
    cursor = request.query_params.get("cursor")
    page = await services(request).conversations.list(owner(request), limit, decode_cursor(cursor) if cursor else None)
    return json_response({"object": "list", "data": [conversation_view(c) for c in page.items],
                          "next_cursor": encode_cursor(page.items[-1]) if page.more else None})


async def get_conversation(request: Request) -> RouteResponse:
    conversation_id = path_uuid(request, "conversation_id")
    limit = int_query(request, "limit", DEFAULT_MESSAGES, 1, MAX_MESSAGES)
    after = int_query(request, "after_seq", 0, 0, INT32_MAX)
    conversation, page = await services(request).conversations.messages(owner(request), conversation_id, after, limit)
    return json_response({**conversation_view(conversation), "messages": [message_view(m) for m in page.items],
                          "next_after_seq": page.items[-1].seq if page.more else None})


async def rename_conversation(request: Request) -> RouteResponse:
    conversation_id = path_uuid(request, "conversation_id")
    spec = decode_body(await request.body(), Rename)
    conversation = await services(request).conversations.rename(owner(request), conversation_id, spec.title)
    return json_response(conversation_view(conversation))


async def delete_conversation(request: Request) -> RouteResponse:
    await services(request).conversations.delete(owner(request), path_uuid(request, "conversation_id"))
    return Response(status_code=204)


async def reply(request: Request, conversation_id: uuid.UUID, spec: NewMessage, *, framing: Framing = Framing.NAMED,
                created: int = CREATED) -> RouteResponse:
    """Start the reply; stream its events, or wait for it and answer with both stored messages."""
    conversations = services(request).conversations
    started = await conversations.post(principal_of(request), conversation_id, spec.reply_request(),
                                      request_state(request))
    headers = reply_headers(conversation_id, started)
    if spec.stream:
        following = conversations.listen(principal_of(request), started.run, framing)
        return EventStreamResponse(following.events, headers=headers, finalize=following.close)
    await cancel_on_disconnect(request.receive, lambda: conversations.wait(started.run))
    if not started.run.done:
        return Response(status_code=CLIENT_CLOSED_REQUEST)  # gone; the reply goes on for the grace period
    user_message, stored = await conversations.stored_pair(conversation_id, started)
    return json_response({"conversation_id": str(conversation_id), "user_message": message_view(user_message),
                          "message": message_view(stored), "reply": stored.content,
                          "dropped_turns": started.dropped_turns}, status_code=created, headers=headers)


async def post_message(request: Request) -> RouteResponse:
    conversation_id = path_uuid(request, "conversation_id")
    spec = decode_body(await request.body(), NewMessage)
    return await reply(request, conversation_id, spec)


async def resume_stream(request: Request) -> RouteResponse:
    """GET /conversations/{id}/stream?message_id=...: every event after Last-Event-ID, then the live rest."""
    conversation_id = path_uuid(request, "conversation_id")
    after = last_event_id(request)
    raw_message_id = request.query_params.get("message_id")
    message_id = parse_uuid(raw_message_id) if raw_message_id is not None else None
    following = await services(request).conversations.resume(
        principal_of(request), conversation_id, message_id, after, message_id_given=raw_message_id is not None)
    return EventStreamResponse(following.events, headers={"X-Message-ID": str(following.message_id)},
                               finalize=following.close)


async def cancel_message(request: Request) -> RouteResponse:
    conversation_id = path_uuid(request, "conversation_id")
    message_id = path_uuid(request, "message_id")
    stored = await services(request).conversations.cancel(owner(request), conversation_id, message_id)
    return json_response(message_view(stored))


routes: list[BaseRoute] = [
    Route(API, create_conversation, methods=["POST"]),
    Route(API, list_conversations, methods=["GET"]),
    Route(API + "/{conversation_id}", get_conversation, methods=["GET"]),
    Route(API + "/{conversation_id}", rename_conversation, methods=["PATCH"]),
    Route(API + "/{conversation_id}", delete_conversation, methods=["DELETE"]),
    Route(API + "/{conversation_id}/messages", post_message, methods=["POST"]),
    Route(API + "/{conversation_id}/stream", resume_stream, methods=["GET"]),
    Route(API + "/{conversation_id}/messages/{message_id}/cancel", cancel_message, methods=["POST"]),
]
