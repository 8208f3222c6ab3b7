"""EventStreamResponse at the ASGI level. The receive/send callables here are test doubles that isolate the HTTP
layer: a client that is already gone, and a socket that takes a moment to accept each write."""

from __future__ import annotations

import anyio

from server.streaming import EventStreamResponse


async def client_already_gone() -> dict[str, str]:  # test double for ASGI receive
    return {"type": "http.disconnect"}


async def slow_socket(message: dict[str, object]) -> None:  # test double for ASGI send
    await anyio.sleep(0.05)


async def test_finalize_runs_even_if_the_events_never_started() -> None:
    started, finalized = [], []

    async def events():
        started.append(True)
        yield b"data: never seen\n\n"

    async def finalize() -> None:
        finalized.append(True)

    response = EventStreamResponse(events(), finalize=finalize)
    await response({"type": "http"}, client_already_gone, slow_socket)
    assert finalized == [True]
    assert started == []  # the producer's own cleanup never ran: finalize is what releases its resources


async def test_a_finished_stream_is_finalized_once() -> None:
    sent: list[dict[str, object]] = []
    finalized = []

    async def events():
        yield b"data: 1\n\n"
        yield b"data: 2\n\n"

    async def never_disconnects() -> dict[str, str]:  # test double: a client that stays
        await anyio.sleep_forever()
        return {"type": "http.disconnect"}

    async def record(message: dict[str, object]) -> None:  # test double for ASGI send
        sent.append(message)

    async def finalize() -> None:
        finalized.append(True)

    await EventStreamResponse(events(), finalize=finalize)({"type": "http"}, never_disconnects, record)
    assert [m.get("body") for m in sent[1:]] == [b"data: 1\n\n", b"data: 2\n\n", b""]
    assert finalized == [True]
