"""Fault injection into the running test server's real engine: vLLM's output stream is wrapped so that it raises
after a number of outputs, as a failing engine does. What is tested is CodeFace's handling of that failure."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def engine_fails(app: Any, *, after_outputs: int = 0, error: BaseException | None = None) -> Iterator[None]:
    """While inside, every generation's vLLM stream raises `error` (vLLM's EngineGenerateError by default) once it
    has produced `after_outputs` outputs."""
    from vllm.v1.engine.exceptions import EngineGenerateError

    llm = app.state.services.engine._llm
    real_generate = llm.generate
    failure = error or EngineGenerateError("injected failure")

    def failing_generate(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        async def stream() -> AsyncIterator[Any]:
            produced = 0
            async for output in real_generate(*args, **kwargs):
                if produced >= after_outputs:
                    raise failure
                produced += 1
                yield output

        return stream()

    llm.generate = failing_generate  # an instance attribute: shadows the method until deleted
    try:
        yield
    finally:
        del llm.generate
