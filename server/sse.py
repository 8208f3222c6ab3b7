"""The one server-sent-events framer: every SSE byte the server writes is made here."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from enum import StrEnum
from typing import Any

import msgspec

_encode = msgspec.json.encode
# JSON bytes of a value, as every frame encodes it.
encode_json = _encode

DONE = b"data: [DONE]\n\n"
HEARTBEAT = b": keep-alive\n\n"
# Ends an idle listener's stream: the client reconnects (EventSource does so by itself, after `retry` ms).
RECONNECT = b'retry: 1000\ndata: {"type":"reconnect"}\n\n'

# What a streaming route sends: framed events, closed (aclose) when the client leaves.
EventStream = AsyncGenerator[bytes, None]


class ReplyEvent(StrEnum):
    """The named events of a conversation reply's stream."""

    DELTA = "message.delta"
    COMPLETED = "message.completed"
    ERROR = "message.error"


class Framing(StrEnum):
    """How a reply's events are framed for a listener: NAMED (`event: message.delta`, the conversation routes) or
    PLAIN (no event name, the name in the data's `type`: what a browser's EventSource.onmessage receives; the
    seed's routes)."""

    NAMED = "named"
    PLAIN = "plain"


def frame_reply_event(event: ReplyEvent, data: dict[str, Any], event_id: int) -> dict[Framing, bytes]:
    """One reply event, framed both ways once, for every listener to take the framing it asked for."""
    return {Framing.NAMED: frame(data, event=event, event_id=event_id),
            Framing.PLAIN: frame({"type": event, **data}, event_id=event_id)}


def frame_reconnect(data: dict[str, Any], retry_ms: int) -> dict[Framing, bytes]:
    """Ends a stream early without an id, so that Last-Event-ID stays the last event's: the client resumes from
    there (EventSource by itself, after `retry_ms`)."""
    body = _encode({"type": "reconnect", **data})
    return {Framing.NAMED: b"retry: %d\nevent: reconnect\ndata: %s\n\n" % (retry_ms, body),
            Framing.PLAIN: b"retry: %d\ndata: %s\n\n" % (retry_ms, body)}


def frame(data: Any, *, event: str | None = None, event_id: int | None = None) -> bytes:
    """One event: `data` as JSON, with an optional event name and id (what Last-Event-ID resumes from)."""
    head = b""
    if event_id is not None:
        head += b"id: %d\n" % event_id
    if event is not None:
        head += b"event: %s\n" % event.encode()
    return head + b"data: " + _encode(data) + b"\n\n"
