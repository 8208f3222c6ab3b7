"""A client of /api/v1/conversations: create one, read its messages, wait for a reply to end, read its SSE events,
listen on the seed's stream route."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from loadtests.sse import SSEEvent, SSEParser, iter_events

API = "/api/v1/conversations"


@dataclass
class Event:
    id: int
    event: str
    data: dict


@dataclass
class SSEReader:
    """Reads named SSE events off a streaming httpx response with the shared client-side parser; keeps the last
    event id, as EventSource does."""

    response: httpx.Response
    last_id: int = 0
    parser: SSEParser = field(default_factory=SSEParser)
    _events: Iterator[SSEEvent] | None = field(default=None, repr=False)

    @property
    def comments(self) -> int:
        return self.parser.comments

    def next(self) -> Event:
        if self._events is None:
            self._events = iter_events(self.response.iter_lines(), self.parser)
        for raw in self._events:
            event = Event(int(raw.id or 0), raw.event or "", raw.json())
            self.last_id = event.id
            return event
        raise EOFError

    def rest(self) -> list[Event]:
        events = []
        while True:
            try:
                events.append(self.next())
            except EOFError:
                return events


def new_conversation(http: httpx.Client, title: str = "") -> str:
    response = http.post(API, json={"title": title})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def messages_of(http: httpx.Client, conversation_id: str) -> list[dict]:
    return http.get(f"{API}/{conversation_id}", params={"limit": 500}).json()["messages"]


def wait_for_status(http: httpx.Client, conversation_id: str, message_id: str, timeout_s: float = 30) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        reply = next(m for m in messages_of(http, conversation_id) if m["id"] == message_id)
        if reply["status"] != "in_progress":
            return reply
        time.sleep(0.2)
    pytest.fail(f"reply {message_id} stayed in_progress")


class SeedListener:
    """A client on the seed's GET /api/v1/stream/{conversation_id}, in a task of its own, until the conversation's
    next reply ends."""

    def __init__(self, client: httpx.AsyncClient, url: str) -> None:
        self.events: list[dict] = []
        self.headers: httpx.Headers | None = None
        self.task = asyncio.create_task(self._listen(client, url))

    async def _listen(self, client: httpx.AsyncClient, url: str) -> None:
        async with client.stream("GET", url) as attached:
            self.headers = attached.headers
            async for line in attached.aiter_lines():
                if line.startswith("data:"):
                    self.events.append(json.loads(line[len("data:"):]))
                    if self.events[-1]["type"] == "message.completed":
                        return

    async def attached(self) -> httpx.Headers:
        """The response's headers, once the route has answered; then a moment for it to start waiting."""
        while self.headers is None:
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        return self.headers

    async def reply(self, timeout_s: float) -> str:
        """The reply's text: deltas only, then message.completed."""
        await asyncio.wait_for(self.task, timeout_s)
        assert len(self.events) > 1
        assert [e["type"] for e in self.events[:-1]] == ["message.delta"] * (len(self.events) - 1)
        return "".join(e["delta"] for e in self.events[:-1])
