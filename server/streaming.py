"""Run work until the client goes away: streaming and non-streaming routes both stop the engine on disconnect."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from contextlib import aclosing
from typing import TypeVar

import anyio
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from server.sse import EventStream

T = TypeVar("T")

# The scope key of the server's own `send`, under every middleware's wrapper (see StreamingApp).
DIRECT_SEND = "codeface.direct_send"


class StreamingApp(Starlette):
    """Starlette that keeps the server's own `send` in the scope, so that an event stream sends its body chunks
    past the middleware: each wrapper in the stack (ours, and Starlette's error and exception senders) acts on the
    response's start message alone, and would otherwise be one more call per token on every stream. A middleware
    that rewrites bodies must not sit above an event stream's route (none does)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope[DIRECT_SEND] = send
        await super().__call__(scope, receive, send)


async def wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def cancel_on_disconnect(receive: Receive, work: Callable[[], Awaitable[T]]) -> T | None:
    """Await `work`; if the client disconnects first, cancel it and return None.

    Call it after the request body has been read: from then on `receive` only reports the disconnect.
    """
    result: list[T] = []
    async with anyio.create_task_group() as group:

        async def run_work() -> None:
            result.append(await work())
            group.cancel_scope.cancel()

        async def watch() -> None:
            await wait_for_disconnect(receive)
            group.cancel_scope.cancel()

        group.start_soon(run_work)
        group.start_soon(watch)
    return result[0] if result else None


class EventStreamResponse:
    """A text/event-stream response whose producer is cancelled, then closed, as soon as the client disconnects.

    Starlette's StreamingResponse notices a gone client only at the next write (ASGI 2.4) and leaves the
    iterator to the garbage collector; an LLM stream must stop the engine at once and deterministically.
    """

    media_type = "text/event-stream"

    def __init__(self, events: EventStream, headers: Mapping[str, str] | None = None,
                 finalize: Callable[[], Awaitable[None]] | None = None) -> None:
        """`finalize` runs once the response is over, however it ended: even when the client left before the
        first event, when `events` never started and its own cleanup never ran."""
        self.events = events
        self.finalize = finalize
        self.headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            # Tells nginx-style proxies not to buffer the stream.
            (b"x-accel-buffering", b"no"),
        ] + [(key.lower().encode("latin-1"), value.encode("latin-1")) for key, value in (headers or {}).items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def stream() -> None:
            await send({"type": "http.response.start", "status": 200, "headers": self.headers})
            # The start went through the middleware; the body needs none of it (StreamingApp).
            body_send: Send = scope.get(DIRECT_SEND, send)
            async for event in self.events:
                await body_send({"type": "http.response.body", "body": event, "more_body": True})
            await body_send({"type": "http.response.body", "body": b"", "more_body": False})

        try:
            async with aclosing(self.events):
                await cancel_on_disconnect(receive, stream)
        finally:
            if self.finalize is not None:
                with anyio.CancelScope(shield=True):
                    await self.finalize()


# What a route handler returns: a plain response, or an event stream.
RouteResponse = Response | EventStreamResponse
