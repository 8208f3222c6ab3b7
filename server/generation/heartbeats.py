"""A generation's steps with keep-alives while the request waits in the engine's queue, for every dialect's stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from engine import StepOutput
from server.generation.generator import Generation


async def with_heartbeats(steps: Generation, interval_s: float) -> AsyncIterator[StepOutput | None]:
    """The steps, with a None every `interval_s` while the first one has not come (the request is queued)."""
    iterator = steps.__aiter__()
    first = asyncio.ensure_future(anext(iterator))
    try:
        while True:
            done, _ = await asyncio.wait({first}, timeout=interval_s)
            if done:
                break
            yield None
        try:
            yield first.result()
        except StopAsyncIteration:
            return
    finally:
        if not first.done():
            first.cancel()
            await asyncio.gather(first, return_exceptions=True)
    async for step in iterator:
        yield step
