"""The conversations API under /api/v1: history kept server-side, replies streamed over SSE and resumable."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from datetime import datetime
from typing import Annotated, Any

import msgspec
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import Response

from engine import PromptTooLongError, SamplingOptions
from server.auth import Principal
from server.conversations import ConversationService
from server.disconnect import EventStreamResponse, cancel_on_disconnect
from server.errors import APIError
from server.generations import Registry, Run, sse
from server.metrics import sse_streams_resumed
from server.routes.auth import parse_uuid
from server.routes.system import json_response
from server.schemas import Count, PositiveInt, Seed, decode_body
from storage.models import Conversation, Message
from storage.repository import Conversations, Messages

Title = Annotated[str, Meta(max_length=300)]
WAIT_FOR_NEXT_REPLY_S = 300.0


class NewConversation(msgspec.Struct, forbid_unknown_fields=True):
    title: Title = ""


class Rename(msgspec.Struct, forbid_unknown_fields=True):
    title: Title


class NewMessage(msgspec.Struct, forbid_unknown_fields=True):
    content: Annotated[str, Meta(min_length=1, max_length=200_000)]
    stream: bool = False
    max_tokens: PositiveInt | None = None
    temperature: Annotated[float, Meta(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Meta(gt=0.0, le=1.0)] | None = None
    stop: str | Annotated[list[str], Meta(max_length=16)] | None = None
    seed: Seed | None = None
    # vLLM's extensions, for load tests that need replies of an exact length.
    ignore_eos: bool = False
    min_tokens: Count = 0


class SeedChat(msgspec.Struct, forbid_unknown_fields=True):
    message: Annotated[str, Meta(min_length=1, max_length=200_000)]
    conversation_id: str | None = None
    stream: bool = False


def conversation_view(c: Conversation) -> dict[str, Any]:
    return {"id": str(c.id), "title": c.title, "created_at": c.created_at.isoformat(),
            "updated_at": c.updated_at.isoformat()}


def message_view(m: Message) -> dict[str, Any]:
    return {"id": str(m.id), "seq": m.seq, "role": m.role, "content": m.content, "status": m.status,
            "prompt_tokens": m.prompt_tokens, "completion_tokens": m.completion_tokens,
            "finish_reason": m.finish_reason, "created_at": m.created_at.isoformat()}


def owner(request: Request) -> uuid.UUID:
    principal: Principal = request.state.principal
    return principal.user_id


def path_uuid(request: Request, name: str) -> uuid.UUID:
    value = parse_uuid(request.path_params[name])
    if value is None:  # a malformed id names nothing: the same 404 as someone else's
        raise APIError(404, f"no such {name.removesuffix('_id')}", param=name)
    return value


def int_query(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise APIError(400, f"{name} must be a whole number from {low} to {high}", param=name)
    return int(raw)


def encode_cursor(c: Conversation) -> str:
    return base64.urlsafe_b64encode(f"{c.created_at.isoformat()}|{c.id}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        stamp, _, ident = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        return datetime.fromisoformat(stamp), uuid.UUID(ident)
    except (ValueError, UnicodeDecodeError):
        raise APIError(400, "invalid cursor: pass next_cursor from the previous page", param="cursor") from None


async def load_conversation(request: Request, conversation_id: uuid.UUID) -> Conversation:
    async with request.app.state.database.session() as session:
        conversation = await Conversations(session).get(owner(request), conversation_id)
    if conversation is None:
        raise APIError(404, "no such conversation", param="conversation_id")
    return conversation


# --- conversations ----------------------------------------------------------------------------------------------

async def create_conversation(request: Request) -> Response:
    spec: NewConversation = decode_body(await request.body(), NewConversation)
    async with request.app.state.database.session() as session:
        conversation = await Conversations(session).create(owner(request), spec.title)
        await session.commit()
    return json_response(conversation_view(conversation), status_code=201)


async def list_conversations(request: Request) -> Response:
    limit = int_query(request, "limit", 20, 1, 100)
    cursor = request.query_params.get("cursor")
    before = decode_cursor(cursor) if cursor else None
    async with request.app.state.database.session() as session:
        page = await Conversations(session).list_for(owner(request), limit=limit + 1, before=before)
    more = len(page) > limit
    page = page[:limit]
    return json_response({"object": "list", "data": [conversation_view(c) for c in page],
                          "next_cursor": encode_cursor(page[-1]) if more else None})


async def get_conversation(request: Request) -> Response:
    conversation_id = path_uuid(request, "conversation_id")
    conversation = await load_conversation(request, conversation_id)
    limit = int_query(request, "limit", 50, 1, 500)
    after = int_query(request, "after_seq", 0, 0, 2 ** 31)
    async with request.app.state.database.session() as session:
        page = await Messages(session).history(conversation_id, after_seq=after, limit=limit + 1)
    more = len(page) > limit
    page = page[:limit]
    return json_response({**conversation_view(conversation), "messages": [message_view(m) for m in page],
                          "next_after_seq": page[-1].seq if more else None})


async def rename_conversation(request: Request) -> Response:
    conversation_id = path_uuid(request, "conversation_id")
    spec: Rename = decode_body(await request.body(), Rename)
    async with request.app.state.database.session() as session:
        conversation = await Conversations(session).rename(owner(request), conversation_id, spec.title)
        await session.commit()
    if conversation is None:
        raise APIError(404, "no such conversation", param="conversation_id")
    return json_response(conversation_view(conversation))


async def delete_conversation(request: Request) -> Response:
    conversation_id = path_uuid(request, "conversation_id")
    registry: Registry = request.app.state.registry
    await load_conversation(request, conversation_id)
    run = registry.current(conversation_id, owner(request))
    if run is not None and registry.cancel(run) and run.task is not None:
        await asyncio.gather(run.task, return_exceptions=True)
    async with request.app.state.database.session() as session:
        deleted = await Conversations(session).delete(owner(request), conversation_id)
        await session.commit()
    if not deleted:
        raise APIError(404, "no such conversation", param="conversation_id")
    return Response(status_code=204)


# --- messages ---------------------------------------------------------------------------------------------------

def options_from(spec: NewMessage, request: Request) -> SamplingOptions:
    settings = request.app.state.settings
    stop = [spec.stop] if isinstance(spec.stop, str) else list(spec.stop or [])
    if any(not s for s in stop):
        raise APIError(400, "stop sequences must not be empty strings", param="stop")
    return SamplingOptions(max_tokens=spec.max_tokens, stop=stop, seed=spec.seed, ignore_eos=spec.ignore_eos,
                           min_tokens=spec.min_tokens,
                           temperature=settings.temperature if spec.temperature is None else spec.temperature,
                           top_p=1.0 if spec.top_p is None else spec.top_p)


async def start_reply(request: Request, conversation_id: uuid.UUID, spec: NewMessage) -> Response:
    service: ConversationService = request.app.state.conversations
    try:
        started = await service.post(owner(request), conversation_id, spec.content, options_from(spec, request))
    except PromptTooLongError as exc:
        raise APIError(400, str(exc), param="content") from None
    headers = {"X-Conversation-ID": str(conversation_id), "X-Message-ID": str(started.run.message_id),
               "X-Dropped-Turns": str(started.dropped_turns)}
    registry: Registry = request.app.state.registry
    if spec.stream:
        return EventStreamResponse(registry.listen(started.run, 0), headers=headers)
    with registry.attached(started.run):
        finished = await cancel_on_disconnect(request.receive, lambda: asyncio.shield(started.run.task))
    if finished is None and not started.run.done:
        return Response(status_code=499)  # gone; the reply goes on for the grace period, then is cancelled
    async with request.app.state.database.session() as session:
        messages = Messages(session)
        user_message = await messages.get(conversation_id, started.user_message_id)
        reply = await messages.get(conversation_id, started.run.message_id)
    assert user_message is not None and reply is not None
    return json_response({"conversation_id": str(conversation_id),
                          "user_message": message_view(user_message),
                          "message": message_view(reply),
                          "dropped_turns": started.dropped_turns}, status_code=201, headers=headers)


async def post_message(request: Request) -> Response:
    conversation_id = path_uuid(request, "conversation_id")
    spec: NewMessage = decode_body(await request.body(), NewMessage)
    return await start_reply(request, conversation_id, spec)


def last_event_id(request: Request) -> int:
    raw = request.headers.get("last-event-id") or request.query_params.get("last_event_id") or "0"
    if not raw.isdigit():
        raise APIError(400, "Last-Event-ID must be the id of an event this stream sent", param="Last-Event-ID")
    return int(raw)


async def resume_stream(request: Request) -> Response:
    """GET /conversations/{id}/stream?message_id=...: every event after Last-Event-ID, then the live rest."""
    conversation_id = path_uuid(request, "conversation_id")
    registry: Registry = request.app.state.registry
    after = last_event_id(request)
    message_id = request.query_params.get("message_id")
    if message_id is not None:
        parsed = parse_uuid(message_id)
        run = registry.get(parsed, owner(request)) if parsed else None
    else:
        run = registry.current(conversation_id, owner(request))
    if run is None or run.conversation_id != conversation_id:
        return await replay_stored(request, conversation_id, message_id)
    if after > len(run.events):
        raise APIError(400, f"Last-Event-ID {after} is past the last event ({len(run.events)})",
                       param="Last-Event-ID")
    if after:
        sse_streams_resumed.labels(request.app.state.engine.model_name).inc()
    return EventStreamResponse(registry.listen(run, after), headers={"X-Message-ID": str(run.message_id)})


async def replay_stored(request: Request, conversation_id: uuid.UUID, message_id: str | None) -> Response:
    """The reply is not held here (finished long ago, or produced by another replica): send what is stored."""
    await load_conversation(request, conversation_id)
    async with request.app.state.database.session() as session:
        messages = await Messages(session).history(conversation_id)
    replies = [m for m in messages if m.role == "assistant" and (message_id is None or str(m.id) == message_id)]
    if not replies:
        raise APIError(404, "no such message in this conversation", param="message_id")
    reply = replies[-1]
    if reply.status == "in_progress":
        raise APIError(409, "this reply is being generated by another replica: route a conversation's requests "
                            "to one replica (see README)", param="message_id")

    async def events() -> Any:
        yield sse(1, "message.completed", {"message_id": str(reply.id), "status": reply.status,
                                           "finish_reason": reply.finish_reason, "content": reply.content,
                                           "prompt_tokens": reply.prompt_tokens,
                                           "completion_tokens": reply.completion_tokens, "replayed": True})

    return EventStreamResponse(events(), headers={"X-Message-ID": str(reply.id)})


async def cancel_message(request: Request) -> Response:
    conversation_id = path_uuid(request, "conversation_id")
    message_id = path_uuid(request, "message_id")
    registry: Registry = request.app.state.registry
    run = registry.get(message_id, owner(request))
    if run is None or run.conversation_id != conversation_id:
        await load_conversation(request, conversation_id)
        raise APIError(409 if await stored_reply(request, conversation_id, message_id) else 404,
                       "this reply is not being generated here", param="message_id")
    if run.done:
        raise APIError(409, "this reply has already ended", param="message_id")
    if registry.cancel(run) and run.task is not None:
        await asyncio.gather(run.task, return_exceptions=True)
    reply = await stored_reply(request, conversation_id, message_id)
    assert reply is not None
    return json_response(message_view(reply))


async def stored_reply(request: Request, conversation_id: uuid.UUID, message_id: uuid.UUID) -> Message | None:
    async with request.app.state.database.session() as session:
        message = await Messages(session).get(conversation_id, message_id)
    return message if message is not None and message.role == "assistant" else None


# --- the seed's shapes ------------------------------------------------------------------------------------------

async def seed_chat(request: Request) -> Response:
    """POST /api/v1/chat {"message", "conversation_id"?}: start or continue a conversation."""
    spec: SeedChat = decode_body(await request.body(), SeedChat)
    if spec.conversation_id is None:
        async with request.app.state.database.session() as session:
            conversation = await Conversations(session).create(owner(request), spec.message[:80])
            await session.commit()
        conversation_id = conversation.id
    else:
        parsed = parse_uuid(spec.conversation_id)
        if parsed is None:
            raise APIError(404, "no such conversation", param="conversation_id")
        conversation_id = parsed
    response = await start_reply(request, conversation_id, NewMessage(content=spec.message, stream=spec.stream))
    return response


async def seed_stream(request: Request) -> Response:
    """GET /api/v1/stream/{conversation_id}: the reply in progress, or the next one."""
    conversation_id = path_uuid(request, "conversation_id")
    await load_conversation(request, conversation_id)
    registry: Registry = request.app.state.registry
    run = registry.current(conversation_id, owner(request))
    if run is not None and not run.done:
        return EventStreamResponse(registry.listen(run, last_event_id(request)),
                                   headers={"X-Message-ID": str(run.message_id)})

    previous = run.message_id if run is not None else None

    async def next_reply() -> Any:
        deadline = time.monotonic() + WAIT_FOR_NEXT_REPLY_S
        waited = 0.0
        while time.monotonic() < deadline:
            upcoming: Run | None = registry.current(conversation_id, owner(request))
            if upcoming is not None and upcoming.message_id != previous:
                async for chunk in registry.listen(upcoming, 0):
                    yield chunk
                return
            await asyncio.sleep(0.25)
            waited += 0.25
            if waited >= registry.heartbeat_s:
                waited = 0.0
                yield b": keep-alive\n\n"

    return EventStreamResponse(next_reply())
