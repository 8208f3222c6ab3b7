"""What every dialect's stream counts and closes, however it ends: the open-streams gauge, a client that left before
the end, and the generation closed."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from types import TracebackType

from server.telemetry.metrics import AbortReason, aborted_requests, sse_streams_active


class StreamAccounting:
    """`async with StreamAccounting(model, close):` around a stream's body. A body that ends without an exception
    finished; any other end (the client left: the response closed the stream, or the task was cancelled) counts as
    a client disconnect. `close` (the generation's) runs last, either way."""

    def __init__(self, model: str, close: Callable[[], Awaitable[None]]) -> None:
        self.model = model
        self.close = close

    async def __aenter__(self) -> StreamAccounting:
        sse_streams_active.labels(self.model).inc()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        traceback: TracebackType | None) -> None:
        sse_streams_active.labels(self.model).dec()
        if exc_type is not None:
            aborted_requests.labels(self.model, AbortReason.CLIENT_DISCONNECT).inc()
        await self.close()
