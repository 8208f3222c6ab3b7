"""Run work until the client goes away (streamed or not); event streams' bodies pass by start-only middleware."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from contextlib import aclosing
from typing import Any, TypeVar

import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, ExceptionHandler, Lifespan, Receive, Scope, Send

from server.sse import EventStream

T = TypeVar("T")

# The scope key of the server's own `send`, under every middleware's wrapper (see StreamingApp).
DIRECT_SEND = "codeface.direct_send"

# A middleware class as Starlette's Middleware holds it: called with the app it wraps, it is an ASGI app.
MiddlewareClass = Callable[..., ASGIApp]


class BodyBypassError(TypeError):
    """A middleware that is not declared start-only was installed in a StreamingApp."""


class StreamingApp(Starlette):
    """Starlette that keeps the server's own `send` in the scope, so that an event stream sends its body chunks
    past the middleware: each wrapper in the stack (ours, and Starlette's error and exception senders) acts on the
    response's start message alone, and would otherwise be one more call per token on every stream. A middleware
    that read or rewrote bodies would silently miss a stream's, so every middleware installed must be one of
    `start_only` (the classes declared to act on a response's start alone), or the app refuses to be built."""

    def __init__(self, routes: Sequence[BaseRoute], middleware: Sequence[Middleware], *,
                 start_only: Collection[MiddlewareClass],
                 exception_handlers: Mapping[Any, ExceptionHandler] | None = None,
                 lifespan: Lifespan[Starlette] | None = None) -> None:
        self.start_only = start_only
        check_start_only(middleware, start_only)
        super().__init__(routes=routes, middleware=middleware, exception_handlers=exception_handlers,
                         lifespan=lifespan)

    def build_middleware_stack(self) -> ASGIApp:
        check_start_only(self.user_middleware, self.start_only)  # again: add_middleware may have added one since
        return super().build_middleware_stack()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope[DIRECT_SEND] = send
        await super().__call__(scope, receive, send)


def check_start_only(middleware: Iterable[Middleware], start_only: Collection[MiddlewareClass]) -> None:
    """Raise BodyBypassError naming the first middleware whose class is not in `start_only`."""
    for entry in middleware:
        if entry.cls not in start_only:
            name = getattr(entry.cls, "__name__", repr(entry.cls))
            raise BodyBypassError(
                f"middleware {name} is not declared start-only: event streams send their body chunks past the "
                "middleware (StreamingApp), so one that reads or rewrites response bodies would miss them. If "
                f"{name} acts on a response's start message alone (status, headers), add it to START_ONLY_MIDDLEWARE "
                "in server/app.py; if it touches bodies, it cannot sit above event streams as they are sent")


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
