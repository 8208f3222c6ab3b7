"""Fault injection into the running test server's real engine: the output queue vLLM hands back for each request is
wrapped so that it raises after a number of outputs, as a failing engine does. What is tested is CodeFace's
handling of that failure; the request itself really runs in the engine (and is aborted there)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class FailingQueue:
    """vLLM's RequestOutputCollector, raising `failure` once `after` outputs have been taken from it."""

    def __init__(self, queue: Any, after: int, failure: BaseException) -> None:
        self.queue = queue
        self.after = after
        self.failure = failure
        self.taken = 0

    @property
    def request_id(self) -> str:
        return str(self.queue.request_id)

    def get_nowait(self) -> Any:
        if self.taken >= self.after:
            raise self.failure
        output = self.queue.get_nowait()
        if output is not None:
            self.taken += 1
        return output

    async def get(self) -> Any:
        if self.taken >= self.after:
            raise self.failure
        output = await self.queue.get()
        self.taken += 1
        return output

    def close(self) -> None:
        self.queue.close()


@contextmanager
def engine_fails(app: Any, *, after_outputs: int = 0, error: BaseException | None = None) -> Iterator[None]:
    """While inside, every request's outputs fail with `error` (vLLM's EngineGenerateError by default) after
    `after_outputs` outputs."""
    from vllm.v1.engine.exceptions import EngineGenerateError

    llm = app.state.services.engine._llm
    real_add_request = llm.add_request
    failure = error or EngineGenerateError("injected failure")

    async def failing_add_request(*args: Any, **kwargs: Any) -> FailingQueue:
        return FailingQueue(await real_add_request(*args, **kwargs), after_outputs, failure)

    llm.add_request = failing_add_request  # an instance attribute: shadows the method until deleted
    try:
        yield
    finally:
        del llm.add_request
