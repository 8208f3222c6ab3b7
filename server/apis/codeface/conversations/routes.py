"""The conversations API under /api/v1/conversations: history kept server-side, replies streamed over SSE and
resumable."""

from __future__ import annotations

import uuid
from http import HTTPStatus

from starlette.requests import Request
from starlette.responses import Response

from server.apis.codeface.conversations.protocol import (
    ConversationUpdate,
    NewConversation,
    NewMessage,
    conversation_view,
    decode_cursor,
    encode_cursor,
    message_view,
)
from server.apis.decode import INT32_MAX, decode_body
from server.apis.endpoint import GENERATION_ERRORS, Endpoint, Link, Method, Operation, Streams
from server.apis.params import (
    CLIENT_CLOSED_REQUEST,
    LAST_EVENT_ID_PARAMS,
    IntQuery,
    Param,
    json_response,
    last_event_id,
    parse_uuid,
    path_uuid,
)
from server.conversations.service import Started
from server.openapi.schemas import (
    ConversationPage,
    ConversationView,
    ConversationWithMessages,
    MessageView,
    ReplyResult,
)
from server.sse import Framing
from server.state import principal_of, request_state, services
from server.streaming import EventStreamResponse, RouteResponse, cancel_on_disconnect

API = "/api/v1/conversations"
CONVERSATION = f"{API}/{{conversation_id}}"
MESSAGES = f"{CONVERSATION}/messages"
STREAM = f"{CONVERSATION}/stream"
CANCEL = f"{MESSAGES}/{{message_id}}/cancel"
TAG = "conversations"
DEFAULT_PAGE, MAX_PAGE = 20, 100
DEFAULT_MESSAGES, MAX_MESSAGES = 50, 500
PAGE_LIMIT = IntQuery("limit", DEFAULT_PAGE, 1, MAX_PAGE)
MESSAGES_LIMIT = IntQuery("limit", DEFAULT_MESSAGES, 1, MAX_MESSAGES)
AFTER_SEQ = IntQuery("after_seq", 0, 0, INT32_MAX)
NOT_FOUND = (HTTPStatus.BAD_REQUEST, HTTPStatus.NOT_FOUND)
# Links: where an answer leads, by the conversation's id in the answer or in the request, and a reply's id in a
# header (the answer is JSON or, with stream: true, an event stream).
NEW_CONVERSATION = {"conversation_id": "$response.body#/id"}
SAME_CONVERSATION = {"conversation_id": "$request.path.conversation_id"}
NEW_REPLY = {**SAME_CONVERSATION, "message_id": "$response.header.X-Message-ID"}


def owner(request: Request) -> uuid.UUID:
    return principal_of(request).user_id


def reply_headers(conversation_id: uuid.UUID, started: Started) -> dict[str, str]:
    return {"X-Conversation-ID": str(conversation_id), "X-Message-ID": str(started.run.message_id),
            "X-Dropped-Turns": str(started.dropped_turns)}


@Operation(Method.POST, API, "Create a conversation, pinned to a model or not", TAG, ok=HTTPStatus.CREATED,
           response=ConversationView, request=NewConversation, body_optional=True, errors=NOT_FOUND, links=(
               Link("Read", Method.GET, CONVERSATION, NEW_CONVERSATION),
               Link("Rename", Method.PATCH, CONVERSATION, NEW_CONVERSATION),
               Link("Post", Method.POST, MESSAGES, NEW_CONVERSATION),
               Link("Follow", Method.GET, STREAM, NEW_CONVERSATION),
               Link("Delete", Method.DELETE, CONVERSATION, NEW_CONVERSATION)))
async def create_conversation(request: Request) -> RouteResponse:
    spec = decode_body(await request.body(), NewConversation)
    conversation = await services(request).conversations.open(principal_of(request), spec.title, spec.model)
    return json_response(conversation_view(conversation), status_code=create_conversation.ok)


@Operation(Method.GET, API, "List the caller's conversations, newest first", TAG, response=ConversationPage,
           parameters=(PAGE_LIMIT, Param("cursor", {"type": "string"}, "next_cursor of the previous page")))
async def list_conversations(request: Request) -> RouteResponse:
    limit = PAGE_LIMIT.parse(request)
    cursor = request.query_params.get("cursor")
    page = await services(request).conversations.list(owner(request), limit, decode_cursor(cursor) if cursor else None)
    return json_response({"object": "list", "data": [conversation_view(c) for c in page.items],
                          "next_cursor": encode_cursor(page.items[-1]) if page.more else None})


@Operation(Method.GET, CONVERSATION, "A conversation with its messages", TAG, response=ConversationWithMessages,
           errors=NOT_FOUND, parameters=(MESSAGES_LIMIT, AFTER_SEQ))
async def get_conversation(request: Request) -> RouteResponse:
    conversation_id = path_uuid(request, "conversation_id")
    limit = MESSAGES_LIMIT.parse(request)
    after = AFTER_SEQ.parse(request)
    conversation, page = await services(request).conversations.messages(owner(request), conversation_id, after, limit)
    return json_response({**conversation_view(conversation), "messages": [message_view(m) for m in page.items],
                          "next_after_seq": page.items[-1].seq if page.more else None})


@Operation(Method.PATCH, CONVERSATION, "Rename a conversation, or pin or unpin its model", TAG,
           response=ConversationView, request=ConversationUpdate, errors=NOT_FOUND)
async def rename_conversation(request: Request) -> RouteResponse:
    conversation_id = path_uuid(request, "conversation_id")
    spec = decode_body(await request.body(), ConversationUpdate)
    conversation = await services(request).conversations.change(principal_of(request), conversation_id,
                                                                spec.change())
    return json_response(conversation_view(conversation))


@Operation(Method.DELETE, CONVERSATION, "Delete a conversation and its messages", TAG, ok=HTTPStatus.NO_CONTENT,
           errors=(HTTPStatus.NOT_FOUND,))
async def delete_conversation(request: Request) -> RouteResponse:
    await services(request).conversations.delete(owner(request), path_uuid(request, "conversation_id"))
    return Response(status_code=delete_conversation.ok)


async def reply(request: Request, conversation_id: uuid.UUID, spec: NewMessage, *, ok: HTTPStatus,
                framing: Framing = Framing.NAMED) -> RouteResponse:
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
                          "dropped_turns": started.dropped_turns}, status_code=ok, headers=headers)


@Operation(Method.POST, MESSAGES,
           "Post a message; the reply is generated, stored and streamed (stream: true) or returned", TAG,
           ok=HTTPStatus.CREATED, response=ReplyResult, request=NewMessage, streams=Streams.ON_REQUEST,
           errors=GENERATION_ERRORS, links=(
               Link("Resume", Method.GET, STREAM, NEW_REPLY),
               Link("Cancel", Method.POST, CANCEL, NEW_REPLY),
               Link("PostAgain", Method.POST, MESSAGES, SAME_CONVERSATION),
               Link("Read", Method.GET, CONVERSATION, SAME_CONVERSATION),
               Link("Delete", Method.DELETE, CONVERSATION, SAME_CONVERSATION)))
async def post_message(request: Request) -> RouteResponse:
    conversation_id = path_uuid(request, "conversation_id")
    spec = decode_body(await request.body(), NewMessage)
    return await reply(request, conversation_id, spec, ok=post_message.ok)


@Operation(Method.GET, STREAM, "Re-attach to a reply's events after Last-Event-ID", TAG, streams=Streams.ALWAYS,
           errors=(HTTPStatus.BAD_REQUEST, HTTPStatus.NOT_FOUND, HTTPStatus.CONFLICT),
           parameters=(Param("message_id", {"type": "string"}), *LAST_EVENT_ID_PARAMS))
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


@Operation(Method.POST, CANCEL, "Stop a reply that is being generated", TAG, response=MessageView,
           errors=(HTTPStatus.NOT_FOUND, HTTPStatus.CONFLICT))
async def cancel_message(request: Request) -> RouteResponse:
    conversation_id = path_uuid(request, "conversation_id")
    message_id = path_uuid(request, "message_id")
    stored = await services(request).conversations.cancel(owner(request), conversation_id, message_id)
    return json_response(message_view(stored))


endpoints: tuple[Endpoint, ...] = (create_conversation, list_conversations, get_conversation, rename_conversation,
                                   delete_conversation, post_message, resume_stream, cancel_message)
