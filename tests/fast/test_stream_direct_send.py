"""An event stream's body chunks go to the server's own send, past the middleware: each wrapper sees the response's
start (its headers are still added) and nothing per token; other responses go through the wrappers as before. A
middleware not declared start-only cannot be installed: the app refuses to be built (or to build its stack)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import ClassVar

import httpx
import pytest
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.app import START_ONLY_MIDDLEWARE
from server.streaming import BodyBypassError, EventStreamResponse, StreamingApp

EVENTS = [b"data: 1\n\n", b"data: 2\n\n", b"data: 3\n\n"]


class Recording:
    """A middleware that adds a header at the start and records every message it forwards."""

    seen: ClassVar[list[str]] = []

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def recording_send(message: Message) -> None:
            Recording.seen.append(message["type"])
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-wrapped", b"yes")]
            await send(message)

        await self.app(scope, receive, recording_send)


async def stream(_request: Request) -> EventStreamResponse:
    async def events() -> AsyncIterator[bytes]:
        for event in EVENTS:
            yield event

    return EventStreamResponse(events())


async def plain(_request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


ROUTES = [Route("/stream", stream), Route("/plain", plain)]


def app() -> StreamingApp:
    return StreamingApp(routes=ROUTES, middleware=[Middleware(Recording)], start_only={Recording})


async def test_stream_chunks_skip_the_wrappers_and_the_headers_do_not() -> None:
    Recording.seen = []
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app()), base_url="http://t") as client:
        response = await client.get("/stream")
    assert response.content == b"".join(EVENTS)
    assert response.headers["x-wrapped"] == "yes"
    assert response.headers["content-type"].startswith("text/event-stream")
    assert Recording.seen == ["http.response.start"]


async def test_other_responses_still_go_through_the_wrappers() -> None:
    Recording.seen = []
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app()), base_url="http://t") as client:
        response = await client.get("/plain")
    assert response.text == "hello"
    assert Recording.seen == ["http.response.start", "http.response.body"]


class BodyRewriting(Recording):
    """Stands for a middleware that would rewrite bodies: never declared start-only."""


def test_a_middleware_not_declared_start_only_is_refused_when_the_app_is_built() -> None:
    with pytest.raises(BodyBypassError, match="BodyRewriting is not declared start-only"):
        StreamingApp(routes=ROUTES, middleware=[Middleware(Recording), Middleware(BodyRewriting)],
                     start_only={Recording})
    with pytest.raises(BodyBypassError, match="BodyRewriting"):
        StreamingApp(routes=ROUTES, middleware=[Middleware(BodyRewriting)], start_only=START_ONLY_MIDDLEWARE)


async def test_one_added_later_is_refused_when_the_stack_is_built() -> None:
    later = app()
    later.add_middleware(BodyRewriting)
    with pytest.raises(BodyBypassError, match="BodyRewriting"):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=later), base_url="http://t") as client:
            await client.get("/plain")
