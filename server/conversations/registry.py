"""Replies that outlive their HTTP connection: each runs as a task of its own (a Run), and is cancelled after a
grace period without listeners. Without `reply_streams_url` one replica holds a reply's buffer (route a
conversation to one replica); with it, replies are shared through Redis and any replica mirrors another's
(mirrors.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from server.conversations.bus import RemoteReply, ReplyBus
from server.conversations.listeners import Listener, Listeners, Signal, Wake
from server.conversations.mirrors import SharedReplies
from server.conversations.run import EVICT_EVERY_S, Retention, Run
from server.sse import EventStream, Framing

logger = logging.getLogger(__name__)


class Registry:
    """The runs this replica holds, by message id; finished ones are kept for late re-attaches (see Retention)."""

    def __init__(self, grace_s: float, listeners: Listeners, retention: Retention | None = None,
                 bus: ReplyBus | None = None) -> None:
        self.grace_s = grace_s
        self.shared = SharedReplies(bus, grace_s) if bus is not None else None
        if bus is not None:
            bus.on_cancel = self._cancel_requested
            bus.on_started = self._started_elsewhere
        self.listeners = listeners
        self.retention = retention or Retention()
        self.runs: dict[uuid.UUID, Run] = {}
        self._by_conversation: dict[uuid.UUID, uuid.UUID] = {}
        # Listeners waiting for a conversation's next reply: its start wakes them.
        self._next_run: dict[uuid.UUID, Signal] = {}
        self._evicted_at = 0.0
        self._tasks: set[asyncio.Task[None]] = set()

    def new_run(self, message_id: uuid.UUID, conversation_id: uuid.UUID, owner_id: uuid.UUID) -> Run:
        return Run(message_id, conversation_id, owner_id, self.retention.reply_bytes)

    def start(self, run: Run, produce: Callable[[Run], Coroutine[Any, Any, None]]) -> Run:
        self._evict()
        self.runs[run.message_id] = run
        self._by_conversation[run.conversation_id] = run.message_id
        if self.shared is not None:
            self.shared.bus.ensure_subscribed()
            run.forward = self.shared.outbox(run).push
            self._background(self.shared.announce(run))
        run.task = asyncio.create_task(produce(run), name=f"reply-{run.message_id}")
        # With nobody attached yet, the grace clock starts now.
        self._arm_grace(run)
        waiting = self._next_run.pop(run.conversation_id, None)
        if waiting is not None:
            waiting.notify()
        return run

    def get(self, message_id: uuid.UUID, owner_id: uuid.UUID) -> Run | None:
        run = self.runs.get(message_id)
        return run if run is not None and run.owner_id == owner_id else None

    def current(self, conversation_id: uuid.UUID, owner_id: uuid.UUID) -> Run | None:
        """The conversation's latest reply on this replica, running or recently finished."""
        message_id = self._by_conversation.get(conversation_id)
        return self.get(message_id, owner_id) if message_id is not None else None

    async def find(self, message_id: uuid.UUID, owner_id: uuid.UUID) -> Run | None:
        """The reply held here, or else, with shared streams, a mirror of the one another replica generates."""
        run = self.get(message_id, owner_id)
        if run is not None or self.shared is None:
            return run
        remote = await self.shared.lookup(message_id)
        if remote is None or remote.owner_id != owner_id:
            return None
        run = self._mirror(remote)
        await self.shared.about_to_listen(run)
        await run.synced.wait()
        return run

    async def find_current(self, conversation_id: uuid.UUID, owner_id: uuid.UUID) -> Run | None:
        """The conversation's latest reply, here or (shared streams) on another replica."""
        run = self.current(conversation_id, owner_id)
        if self.shared is None:
            return run
        remote = await self.shared.latest(conversation_id)
        if remote is None or remote.owner_id != owner_id or (run is not None and run.message_id == remote.message_id):
            return run
        run = self.runs.get(remote.message_id) or self._mirror(remote)
        if run.remote:
            await self.shared.about_to_listen(run)
        await run.synced.wait()
        return run

    def _mirror(self, remote: RemoteReply) -> Run:
        assert self.shared is not None
        self.shared.bus.ensure_subscribed()
        existing = self.runs.get(remote.message_id)
        if existing is not None:
            return existing
        run = Run(remote.message_id, remote.conversation_id, remote.owner_id, self.retention.reply_bytes, remote=True)
        self.runs[run.message_id] = run
        self._by_conversation[run.conversation_id] = run.message_id
        run.task = asyncio.create_task(self.shared.follow_remote(run), name=f"mirror-{run.message_id}")
        run.task.add_done_callback(lambda _task: self._forget_abandoned(run))
        return run

    def _forget_abandoned(self, run: Run) -> None:
        if run.abandoned and self.runs.get(run.message_id) is run:
            self._forget(run)

    def _started_elsewhere(self, remote: RemoteReply) -> None:
        """A reply started on some replica: wakes this replica's listeners waiting for the conversation's next."""
        waiting = self._next_run.get(remote.conversation_id)
        if waiting is None or remote.message_id in self.runs:
            return
        self._mirror(remote)
        del self._next_run[remote.conversation_id]
        waiting.notify()

    def _cancel_requested(self, message_id: uuid.UUID) -> None:
        run = self.runs.get(message_id)
        if run is not None and not run.remote:
            self.cancel(run)

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def running(self, conversation_id: uuid.UUID) -> bool:
        message_id = self._by_conversation.get(conversation_id)
        run = self.runs.get(message_id) if message_id is not None else None
        return run is not None and not run.done

    def upcoming(self, conversation_id: uuid.UUID, owner_id: uuid.UUID, previous: uuid.UUID | None) -> Run | None:
        """The conversation's reply on this replica that is not `previous`, if one has started."""
        run = self.current(conversation_id, owner_id)
        return run if run is not None and run.message_id != previous else None

    async def wait_for_next(self, conversation_id: uuid.UUID, listener: Listener) -> Wake:
        """Until a reply starts in the conversation (EVENT), or the listener's heartbeat or idle close is due."""
        if self.shared is not None:
            self.shared.bus.ensure_subscribed()
        signal = self._next_run.setdefault(conversation_id, Signal())
        try:
            return await self.listeners.wait(listener, signal)
        finally:
            if not signal.waiters and self._next_run.get(conversation_id) is signal:
                del self._next_run[conversation_id]

    @contextlib.contextmanager
    def attached(self, run: Run) -> Iterator[None]:
        """Counts as a listener while inside: the grace clock stops, and starts again when the last one leaves."""
        run.listeners += 1
        if run.grace_timer is not None:
            run.grace_timer.cancel()
            run.grace_timer = None
        if run.remote and self.shared is not None and (run.presence is None or run.presence.done()):
            run.presence = asyncio.create_task(self.shared.keep_listening(run))
        try:
            yield
        finally:
            run.listeners -= 1
            if run.listeners == 0 and not run.done and not run.remote:
                self._arm_grace(run)

    async def listen(self, run: Run, after_id: int, listener: Listener,
                     framing: Framing = Framing.NAMED) -> EventStream:
        with self.attached(run):
            async for chunk in run.follow(after_id, listener, self.listeners, framing):
                yield chunk

    def cancel(self, run: Run) -> bool:
        """Stops a reply; for a mirror, asks the replica generating it (the mirror ends with its final event)."""
        if run.done or run.task is None:
            return False
        if run.remote:
            if self.shared is not None:
                self._background(self.shared.request_cancel(run))
            return True
        run.cancel_requested = True
        run.task.cancel()
        return True

    async def shutdown(self) -> None:
        """Cancel what is still running and wait for each to record its end."""
        tasks = [run.task for run in self.runs.values() if run.task is not None and not run.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.listeners.stop()
        if self.shared is not None:
            await self.shared.bus.close()

    def _arm_grace(self, run: Run) -> None:
        if run.background:
            return
        def expire() -> None:
            run.grace_timer = None
            if run.listeners == 0 and not run.done:
                if self.shared is not None:
                    self._background(self._expire_shared(run))
                    return
                logger.info("no listener for %.0f s: cancelling reply %s", self.grace_s, run.message_id)
                self.cancel(run)

        run.grace_timer = asyncio.get_running_loop().call_later(self.grace_s, expire)

    async def _expire_shared(self, run: Run) -> None:
        """Another replica's listeners keep the reply going; without any, it is cancelled as locally."""
        assert self.shared is not None
        if run.listeners or run.done:
            return
        if await self.shared.someone_listens(run):
            self._arm_grace(run)
            return
        logger.info("no listener for %.0f s on any replica: cancelling reply %s", self.grace_s, run.message_id)
        self.cancel(run)

    def _evict(self) -> None:
        """Finished replies past their retention go; so do the oldest finished ones while the buffers are over
        their total size."""
        now = time.monotonic()
        if now - self._evicted_at < EVICT_EVERY_S:
            return
        self._evicted_at = now
        finished = sorted((run for run in self.runs.values() if run.done and run.finished_at is not None),
                          key=lambda run: run.finished_at or 0.0)
        total = sum(run.size for run in self.runs.values())
        for run in finished:
            expired = now - (run.finished_at or now) > self.retention.seconds
            if not expired and total <= self.retention.total_bytes:
                break
            total -= run.size
            self._forget(run)

    def _forget(self, run: Run) -> None:
        del self.runs[run.message_id]
        if self._by_conversation.get(run.conversation_id) == run.message_id:
            del self._by_conversation[run.conversation_id]
