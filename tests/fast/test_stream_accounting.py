"""StreamAccounting, the one place the streams of every dialect count themselves: the open-streams gauge back to
where it was, a client disconnect counted only when the stream did not finish, and the generation closed either way."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from server.generation.stream_accounting import StreamAccounting
from server.telemetry.metrics import AbortReason, aborted_requests, sse_streams_active

MODEL = "accounting-test-model"


def gauge() -> float:
    return sse_streams_active.labels(MODEL)._value.get()


def aborts() -> float:
    return aborted_requests.labels(MODEL, AbortReason.CLIENT_DISCONNECT)._value.get()


class Closer:
    def __init__(self) -> None:
        self.closed = 0

    async def __call__(self) -> None:
        self.closed += 1


async def test_a_finished_stream_is_not_an_abort() -> None:
    closer, before = Closer(), aborts()
    async with StreamAccounting(MODEL, closer):
        assert gauge() == 1
    assert gauge() == 0 and aborts() == before and closer.closed == 1


@pytest.mark.parametrize("ending", [GeneratorExit, RuntimeError])
async def test_a_stream_that_did_not_finish_counts_a_client_disconnect(ending: type[BaseException]) -> None:
    closer, before = Closer(), aborts()
    with pytest.raises(ending):
        async with StreamAccounting(MODEL, closer):
            raise ending()
    assert gauge() == 0 and aborts() == before + 1 and closer.closed == 1


async def test_a_stream_closed_by_its_consumer_mid_way() -> None:
    closer, before = Closer(), aborts()

    async def stream() -> AsyncIterator[bytes]:
        async with StreamAccounting(MODEL, closer):
            yield b"one"
            yield b"two"

    events = stream()
    assert await anext(events) == b"one" and gauge() == 1
    await events.aclose()
    assert gauge() == 0 and aborts() == before + 1 and closer.closed == 1
