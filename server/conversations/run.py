"""One reply being generated: the SSE events it sent, kept in a bounded in-memory buffer so that a client can
re-attach with Last-Event-ID, and its listeners, who wait on signals (listeners.py), never on a sleep loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from server.conversations.bus import StreamEntry
from server.conversations.listeners import Listener, Listeners, Signal, Wake
from server.exceptions import Conflict, InvalidRequest
from server.sse import HEARTBEAT, EventStream, Framing, ReplyEvent, frame_reply_event

logger = logging.getLogger(__name__)
EVICT_EVERY_S = 1.0
REPLY_BYTES = 4 << 20
# After the final event, how long a stream's end waits for this replica's final write of the reply: a client that
# reads the conversation once the stream has ended finds the reply stored, and a database outage holds no stream.
FINAL_WRITE_WAIT_S = 2.0


@dataclass(frozen=True, slots=True)
class Retention:
    """How much of finished and running replies stays in memory for re-attaches."""

    seconds: float = 300.0                     # a finished reply's events stay this long
    reply_bytes: int = REPLY_BYTES             # one reply's buffer keeps at most this much (its newest events)
    total_bytes: int = 256 << 20               # all buffers together: the oldest finished replies go first


class ResumeGap(Conflict):
    """The events after Last-Event-ID are no longer buffered: fetch the stored message instead."""


class Run:
    """One reply being generated: its buffered events, who is listening, and the task producing it."""

    def __init__(self, message_id: uuid.UUID, conversation_id: uuid.UUID, owner_id: uuid.UUID,
                 max_bytes: int = REPLY_BYTES, *, remote: bool = False) -> None:
        self.message_id = message_id
        self.conversation_id = conversation_id
        self.owner_id = owner_id
        self.events: list[dict[Framing, bytes]] = []
        self.first_id = 1  # the id of events[0]: older events were dropped past max_bytes
        self.size = 0
        self.max_bytes = max_bytes
        self.done = False
        self.listeners = 0
        self.finished_at: float | None = None
        self.task: asyncio.Task[None] | None = None
        self.grace_timer: asyncio.TimerHandle | None = None
        self.changed = Signal()
        # remote: a mirror of a reply another replica generates (its task reads the shared stream).
        self.remote = remote
        # Where this replica's events also go when replies are shared (an Outbox's push).
        self.forward: Callable[[StreamEntry], None] | None = None
        self.presence: asyncio.Task[None] | None = None
        # A mirror is synced once its first read of the shared stream is in (what was published so far).
        self.synced = asyncio.Event()
        if not remote:
            self.synced.set()
        # Set once this replica's final write of the reply has landed (or given up); `finishing` once it has begun.
        self.stored = asyncio.Event()
        self.finishing = False
        # A mirror that ended early (a gap, or Redis unreachable): forgotten, so that a resume mirrors afresh.
        self.abandoned = False
        # background: the run goes on without listeners (a background response): no grace clock ever cancels it.
        self.background = False
        # Set by an explicit cancel (a client's, here or through another replica), not by a shutdown's.
        self.cancel_requested = False

    @property
    def last_id(self) -> int:
        return self.first_id + len(self.events) - 1

    async def publish(self, event: ReplyEvent, data: dict[str, Any], *, final: bool = False) -> None:
        event_id = self.last_id + 1
        frames = frame_reply_event(event, data, event_id)
        self._append(frames, final)
        if self.forward is not None:
            self.forward(StreamEntry(event_id, frames[Framing.NAMED], frames[Framing.PLAIN], final))

    async def publish_built(self, build: Callable[[int], bytes], *, final: bool = False) -> int:
        """An event framed by the caller from its id (one framing serves both: e.g. a Responses API event whose
        sequence_number follows the id); shared like a reply's events. Returns the id."""
        event_id = self.last_id + 1
        framed = build(event_id)
        self._append({Framing.NAMED: framed, Framing.PLAIN: framed}, final)
        if self.forward is not None:
            self.forward(StreamEntry(event_id, framed, framed, final))
        return event_id

    def mirror(self, entry: StreamEntry) -> bool:
        """An event read from the shared stream, in order (the stream may have dropped its oldest; one sent twice
        is skipped); False if events are missing before it (they never reached the stream)."""
        if not self.events:
            self.first_id = entry.event_id
        if entry.event_id > self.last_id + 1:
            return False
        if entry.event_id == self.last_id + 1:
            self._append({Framing.NAMED: entry.named, Framing.PLAIN: entry.plain}, entry.final)
        return True

    def abandon(self, frames: dict[Framing, bytes]) -> None:
        """Ends a mirror early with `frames` (no event id: its listeners resume from the last event they got)."""
        self.abandoned = True
        self.events.append(frames)
        self.done = True
        self.finished_at = time.monotonic()
        self.changed.notify()

    def _append(self, frames: dict[Framing, bytes], final: bool) -> None:
        self.events.append(frames)
        self.size += len(frames[Framing.NAMED]) + len(frames[Framing.PLAIN])
        while self.size > self.max_bytes and len(self.events) > 1:
            dropped = self.events.pop(0)
            self.size -= len(dropped[Framing.NAMED]) + len(dropped[Framing.PLAIN])
            self.first_id += 1
        if final:
            self.done = True
            self.finished_at = time.monotonic()
        self.changed.notify()

    async def wait(self) -> None:
        """Until the task producing the reply has ended, and the reply with it; cancelling the caller does not
        cancel the task. A cancel that came once the generation had ended stops the task's wait for the final
        write, not the write: that is waited for here."""
        if self.task is not None:
            await asyncio.wait([self.task])
            if self.finishing:
                await self.stored.wait()

    async def settled(self) -> None:
        """Until the final write has landed, for at most FINAL_WRITE_WAIT_S (a mirror's is another replica's)."""
        if self.remote or self.task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stored.wait(), FINAL_WRITE_WAIT_S)

    async def catch_up(self, event_id: int, timeout_s: float) -> None:
        """A mirror may lag the replica generating the reply by a batch: waits (bounded) until it holds
        `event_id`, so that a client resuming from what it saw there is not told the id is in the future."""
        deadline = time.monotonic() + timeout_s
        while self.remote and not self.done and self.last_id < event_id and time.monotonic() < deadline:
            waiter: asyncio.Future[Wake] = asyncio.get_running_loop().create_future()
            self.changed.waiters.add(waiter)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, deadline - time.monotonic())

    def check_resumable(self, after_id: int) -> None:
        if after_id > self.last_id:
            raise InvalidRequest(f"Last-Event-ID {after_id} is past the last event ({self.last_id})",
                                 param="Last-Event-ID")
        if after_id < self.first_id - 1:
            raise ResumeGap(f"the events after {after_id} are no longer buffered (the oldest is {self.first_id}); "
                            "fetch the stored message", param="Last-Event-ID")

    async def follow(self, after_id: int, listener: Listener, listeners: Listeners,
                     framing: Framing = Framing.NAMED) -> EventStream:
        """Every event after `after_id`, then the live rest until the reply ends; a heartbeat when idle."""
        position = max(after_id, self.first_id - 1)
        listener.idle_after_s = None  # a running reply ends by itself
        while True:
            if position < self.last_id:
                start = max(position + 1, self.first_id) - self.first_id
                pending = self.events[start:]
                position = self.last_id
                yield b"".join(event[framing] for event in pending)
                listeners.wrote(listener, event=True)
            if self.done and position >= self.last_id:
                await self.settled()
                return
            if await listeners.wait(listener, self.changed) is not Wake.EVENT:
                yield HEARTBEAT
                listeners.wrote(listener, event=False)


