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
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from server.serving.reply_bus import ALIVE_EVERY_S, ALIVE_TTL_S, RemoteReply, ReplyBus, StreamEntry
from server.serving.sse import ReplyEvent

if TYPE_CHECKING:
    from server.serving.replies import Run

logger = logging.getLogger(__name__)
RETRY_AFTER_REDIS_ERROR_S = 1.0
LOST_OWNER = "the replica generating this reply stopped; fetch the stored message"


class Outbox:
    """Forwards one local reply's events to its Redis stream: pushed without waiting, written in batches by a task
    of its own, which also keeps the reply's `alive` key fresh until the final event is out."""

    def __init__(self, bus: ReplyBus, message_id: uuid.UUID) -> None:
        self.bus = bus
        self.message_id = message_id
        self.pending: list[StreamEntry] = []
        self.wake = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self._flush(), name=f"outbox-{message_id}")

    def push(self, entry: StreamEntry) -> None:
        self.pending.append(entry)
        self.wake.set()

    async def _flush(self) -> None:
        alive_at = time.monotonic()
        warned = False
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), ALIVE_EVERY_S)
            self.wake.clear()
            batch, self.pending = self.pending, []
            try:
                if batch:
                    await self.bus.append(self.message_id, batch)
                if time.monotonic() - alive_at >= ALIVE_EVERY_S and not (batch and batch[-1].final):
                    await self.bus.keep_alive(self.message_id)
                    alive_at = time.monotonic()
            except RedisError as exc:
                if not warned:
                    logger.warning("reply streams: could not forward reply %s (%s); other replicas will not see "
                                   "all of it", self.message_id, exc)
                    warned = True
            if batch and batch[-1].final:
                return


class SharedReplies:
    """What the Registry asks of shared streams: announce, forward, mirror, presence and cancel."""

    def __init__(self, bus: ReplyBus, grace_s: float) -> None:
        self.bus = bus
        self.grace_s = grace_s

    def outbox(self, run: Run) -> Outbox:
        return Outbox(self.bus, run.message_id)

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
        """A lookup that Redis failing answers with "not shared" (the caller falls back to what is stored)."""
        try:
            return await query
        except RedisError as exc:
            logger.warning("reply streams: lookup failed (%s)", exc)
            return None

    async def follow_remote(self, run: Run) -> None:
        """The task of a mirror: reads the reply's stream into `run` until its final event; ends it with an error
        event if the owner's `alive` key lapses (the replica died: the reconciler marks the reply interrupted)."""
        position, heard_at = "0-0", time.monotonic()
        while not run.done:
            try:
                position, entries = await self.bus.read(run.message_id, position, block=run.synced.is_set())
                run.synced.set()
                if entries:
                    heard_at = time.monotonic()
                    for entry in entries:
                        run.mirror(entry)
                elif time.monotonic() - heard_at > ALIVE_TTL_S and not await self.bus.alive(run.message_id):
                    await run.publish(ReplyEvent.ERROR, {"message_id": str(run.message_id), "error": LOST_OWNER},
                                      final=True)
            except RedisError as exc:
                run.synced.set()  # nothing more to wait for now: what was read so far is served
                logger.warning("reply streams: reading reply %s failed (%s); retrying", run.message_id, exc)
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
