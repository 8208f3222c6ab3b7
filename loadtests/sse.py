"""The one server-sent-events parser on the client side: the load tests and the test suite read streams with it."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import msgspec

DONE = "[DONE]"


@dataclass(slots=True)
class SSEEvent:
    data: str
    event: str | None = None
    id: str | None = None

    @property
    def done(self) -> bool:
        return self.data == DONE

    def json(self) -> Any:
        return msgspec.json.decode(self.data)


class SSEParser:
    """Feed lines (without their line ending); an event comes out at each blank line. Comments are counted."""

    def __init__(self) -> None:
        self.comments = 0
        self._data: list[str] = []
        self._event: str | None = None
        self._id: str | None = None

    def feed(self, line: str) -> SSEEvent | None:
        if not line:
            if not self._data and self._event is None:
                return None
            event = SSEEvent("\n".join(self._data), self._event, self._id)
            self._data, self._event = [], None
            return event
        if line.startswith(":"):
            self.comments += 1
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            self._id = value  # kept across events, as EventSource keeps the last event id
        return None


def iter_events(lines: Iterable[str], parser: SSEParser | None = None) -> Iterator[SSEEvent]:
    parser = parser or SSEParser()
    for line in lines:
        event = parser.feed(line)
        if event is not None:
            yield event


async def aiter_events(lines: AsyncIterable[str], parser: SSEParser | None = None) -> AsyncIterator[SSEEvent]:
    parser = parser or SSEParser()
    async for line in lines:
        event = parser.feed(line)
        if event is not None:
            yield event
