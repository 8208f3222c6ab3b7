"""The replica side of shared reply streams (serving/reply_bus.py): an outbox per reply generated here that
forwards its events to Redis in batches (never on the token path's await), a mirror per reply generated elsewhere
that reads them back into a local Run, and the presence and cancel signals between the two."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Coroutine
from typing import Any

from redis.exceptions import RedisError

from server.conversations.bus import ALIVE_EVERY_S, ALIVE_TTL_S, RemoteReply, ReplyBus, StreamEntry
from server.conversations.run import Run
from server.exceptions import Unavailable
from server.sse import ReplyEvent, frame_reconnect

logger = logging.getLogger(__name__)
RETRY_AFTER_REDIS_ERROR_S = 1.0
LOST_OWNER = "the replica generating this reply stopped; fetch the stored message"
# Why a mirror ended early (its listeners resume from their last event id).
GAP = "events of this reply did not reach this replica; resume"
UNREACHABLE = "the shared reply streams (Redis) are not answering; resume"
RECONNECT_RETRY_MS = 2000
UNREACHABLE_RETRY_AFTER_S = 2


class Outbox:
    """Forwards one local reply's events to its Redis stream: pushed without waiting, written in batches by a task
    of its own, which also keeps the reply's keys fresh until the final event is out. A batch that Redis refuses
    is sent again (a mirror skips what it already holds) until it lands; what waits meanwhile is bounded (past
    `max_bytes` the oldest go: mirrors see the gap and tell their listeners to resume)."""

    def __init__(self, bus: ReplyBus, reply: RemoteReply, max_bytes: int) -> None:
        self.bus = bus
        self.reply = reply
        self.max_bytes = max_bytes
        self.pending: list[StreamEntry] = []
        self.size = 0
        self.dropped = 0  # how many the bound dropped from the front so far
        self.wake = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self._flush(), name=f"outbox-{reply.message_id}")

    def push(self, entry: StreamEntry) -> None:
        self.pending.append(entry)
        self.size += _size(entry)
        while self.size > self.max_bytes and len(self.pending) > 1:
            self.size -= _size(self.pending.pop(0))
            self.dropped += 1
        self.wake.set()

    async def _flush(self) -> None:
        alive_at = time.monotonic()
        failing_since: float | None = None
        while True:
            if failing_since is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), ALIVE_EVERY_S)
            else:
                await asyncio.sleep(RETRY_AFTER_REDIS_ERROR_S)
            self.wake.clear()
            batch, dropped = list(self.pending), self.dropped
            final = bool(batch) and batch[-1].final
            try:
                if batch:
                    await self.bus.append(self.reply, batch)
                if not final and (failing_since is not None or time.monotonic() - alive_at >= ALIVE_EVERY_S):
                    await self.bus.keep_alive(self.reply)
                    alive_at = time.monotonic()
            except RedisError as exc:
                if failing_since is None:
                    failing_since = time.monotonic()
                    logger.warning("reply streams: could not forward reply %s (%s); retrying", self.reply.message_id,
                                   exc)
                if final and time.monotonic() - failing_since > self.bus.retention_s:
                    logger.error("reply streams: gave up forwarding the end of reply %s after %.0f s",
                                 self.reply.message_id, time.monotonic() - failing_since)
                    return
                continue
            if failing_since is not None:
                logger.info("reply streams: forwarding reply %s again", self.reply.message_id)
                failing_since = None
            # What was sent leaves the queue (less what the bound dropped meanwhile); pushes meanwhile stay.
            sent = max(0, len(batch) - (self.dropped - dropped))
            self.size -= sum(map(_size, self.pending[:sent]))
            del self.pending[:sent]
            if final:
                return


def _size(entry: StreamEntry) -> int:
    return len(entry.named) + len(entry.plain)


class SharedReplies:
    """What the Registry asks of shared streams: announce, forward, mirror, presence and cancel."""

    def __init__(self, bus: ReplyBus, grace_s: float) -> None:
        self.bus = bus
        self.grace_s = grace_s

    def outbox(self, run: Run) -> Outbox:
        return Outbox(self.bus, RemoteReply(run.message_id, run.conversation_id, run.owner_id), run.max_bytes)

    async def announce(self, run: Run) -> None:
        try:
            await self.bus.announce(RemoteReply(run.message_id, run.conversation_id, run.owner_id))
        except RedisError as exc:
            logger.warning("reply streams: could not announce reply %s (%s)", run.message_id, exc)

    async def lookup(self, message_id: uuid.UUID) -> RemoteReply | None:
        return await self._find(self.bus.lookup(message_id))

    async def latest(self, conversation_id: uuid.UUID) -> RemoteReply | None:
        return await self._find(self.bus.latest(conversation_id))

    @staticmethod
    async def _find(query: Coroutine[Any, Any, RemoteReply | None]) -> RemoteReply | None:
        """A lookup; Redis failing or not answering (a bounded wait) is Unavailable: whether another replica holds
        the reply is unknown, and a stored in-progress reply would be answered wrongly (409)."""
        try:
            return await query
        except RedisError as exc:
            logger.warning("reply streams: lookup failed (%s)", exc)
            raise Unavailable("the shared reply streams (Redis) are not answering; retry",
                              retry_after_s=UNREACHABLE_RETRY_AFTER_S) from None

    async def follow_remote(self, run: Run) -> None:
        """The task of a mirror: reads the reply's stream into `run` until its final event; ends it with an error
        event if the owner's `alive` key lapses (the replica died: the reconciler marks the reply interrupted).
        Ends it early with a reconnect event (its listeners resume elsewhere or later, from their last event id)
        if the stream has a gap or Redis fails for ALIVE_TTL_S: never a silent gap, never a false "stopped"."""
        position, heard_at = "0-0", time.monotonic()
        failing_since: float | None = None
        while not run.done:
            try:
                position, entries = await self.bus.read(run.message_id, position, block=run.synced.is_set())
                run.synced.set()
                if failing_since is not None:
                    heard_at, failing_since = time.monotonic(), None  # Redis's outage is not the owner's silence
                if entries:
                    heard_at = time.monotonic()
                    if not all(run.mirror(entry) for entry in entries):
                        run.abandon(frame_reconnect({"message_id": str(run.message_id), "reason": GAP},
                                                    RECONNECT_RETRY_MS))
                        return
                elif time.monotonic() - heard_at > ALIVE_TTL_S and not await self.bus.alive(run.message_id):
                    await run.publish(ReplyEvent.ERROR, {"message_id": str(run.message_id), "error": LOST_OWNER},
                                      final=True)
            except RedisError as exc:
                run.synced.set()  # nothing more to wait for now: what was read so far is served
                if failing_since is None:
                    failing_since = time.monotonic()
                    logger.warning("reply streams: reading reply %s failed (%s); retrying", run.message_id, exc)
                if time.monotonic() - failing_since > ALIVE_TTL_S:
                    run.abandon(frame_reconnect({"message_id": str(run.message_id), "reason": UNREACHABLE},
                                                RECONNECT_RETRY_MS))
                    return
                await asyncio.sleep(RETRY_AFTER_REDIS_ERROR_S)

    async def about_to_listen(self, run: Run) -> None:
        """A listener found the mirror and will attach once it has caught up: the owner's grace clock counts it from
        now (catching up may take seconds on a loaded replica; the grace period is short)."""
        with contextlib.suppress(RedisError):
            await self.bus.mark_listening(run.message_id, self.grace_s)

    async def keep_listening(self, run: Run) -> None:
        """While a mirror has listeners: tells the owner, whose grace clock would otherwise cancel the reply."""
        while run.listeners > 0 and not run.done:
            with contextlib.suppress(RedisError):
                await self.bus.mark_listening(run.message_id, self.grace_s)
            await asyncio.sleep(self.grace_s / 3)

    async def someone_listens(self, run: Run) -> bool:
        try:
            return await self.bus.listening(run.message_id)
        except RedisError:
            return False

    async def request_cancel(self, run: Run) -> None:
        try:
            await self.bus.request_cancel(run.message_id)
        except RedisError as exc:
            logger.warning("reply streams: could not send the cancel of %s (%s)", run.message_id, exc)
