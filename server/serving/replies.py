"""Replies that outlive their HTTP connection: each runs as a task of its own, keeps every SSE event it sent in an
in-memory buffer so that a client can re-attach with Last-Event-ID, and is cancelled after a grace period without
listeners. One replica holds a reply's buffer: behind a load balancer, route a conversation's requests to one
replica (see README)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from server.serving.sse import HEARTBEAT, EventStream, Framing, ReplyEvent, frame_reply_event

logger = logging.getLogger(__name__)
# How long a finished reply stays here for late re-attaches.
RETENTION_S = 300.0


class Run:
    """One reply being generated: its events so far, who is listening, and the task producing it."""

    def __init__(self, message_id: uuid.UUID, conversation_id: uuid.UUID, owner_id: uuid.UUID) -> None:
        self.message_id = message_id
        self.conversation_id = conversation_id
        self.owner_id = owner_id
        self.events: list[dict[Framing, bytes]] = []
        self.done = False
        self.listeners = 0
        self.finished_at: float | None = None
        self.task: asyncio.Task[None] | None = None
        self._changed = asyncio.Condition()
        self._grace_timer: asyncio.Task[None] | None = None

    async def publish(self, event: ReplyEvent, data: dict[str, Any], *, final: bool = False) -> None:
        async with self._changed:
            self.events.append(frame_reply_event(event, data, len(self.events) + 1))
            if final:
                self.done = True
                self.finished_at = time.monotonic()
            self._changed.notify_all()

    async def wait(self) -> None:
        """Until the task producing the reply has ended; cancelling the caller does not cancel the task."""
        if self.task is not None:
            await asyncio.shield(self.task)

    async def follow(self, after_id: int, heartbeat_s: float, framing: Framing = Framing.NAMED) -> EventStream:
        """Every event after `after_id`, then the live rest until the reply ends; heartbeats while idle."""
        position = max(0, after_id)
        while True:
            async with self._changed:
                if position >= len(self.events) and not self.done:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), heartbeat_s)
                pending = self.events[position:]
                done = self.done
            if pending:
                position += len(pending)
                yield b"".join(event[framing] for event in pending)
            elif not done:
                yield HEARTBEAT
            if done and position >= len(self.events):
                return


class Registry:
    """The runs this replica holds, by message id; finished ones are kept `retention_s` for late re-attaches."""

    def __init__(self, grace_s: float, retention_s: float = RETENTION_S, heartbeat_s: float = 15.0) -> None:
        self.grace_s = grace_s
        self.retention_s = retention_s
        self.heartbeat_s = heartbeat_s
        self.runs: dict[uuid.UUID, Run] = {}
        self._by_conversation: dict[uuid.UUID, uuid.UUID] = {}

    def start(self, run: Run, produce: Callable[[Run], Coroutine[Any, Any, None]]) -> Run:
        self._evict()
        self.runs[run.message_id] = run
        self._by_conversation[run.conversation_id] = run.message_id
        run.task = asyncio.create_task(produce(run), name=f"reply-{run.message_id}")
        # With nobody attached yet, the grace clock starts now.
        self._arm_grace(run)
        return run

    def get(self, message_id: uuid.UUID, owner_id: uuid.UUID) -> Run | None:
        run = self.runs.get(message_id)
        return run if run is not None and run.owner_id == owner_id else None

    def current(self, conversation_id: uuid.UUID, owner_id: uuid.UUID) -> Run | None:
        """The conversation's latest reply on this replica, running or recently finished."""
        message_id = self._by_conversation.get(conversation_id)
        return self.get(message_id, owner_id) if message_id is not None else None

    def running(self, conversation_id: uuid.UUID) -> bool:
        message_id = self._by_conversation.get(conversation_id)
        run = self.runs.get(message_id) if message_id is not None else None
        return run is not None and not run.done

    @contextlib.contextmanager
    def attached(self, run: Run) -> Iterator[None]:
        """Counts as a listener while inside: the grace clock stops, and starts again when the last one leaves."""
        run.listeners += 1
        if run._grace_timer is not None:
            run._grace_timer.cancel()
            run._grace_timer = None
        try:
            yield
        finally:
            run.listeners -= 1
            if run.listeners == 0 and not run.done:
                self._arm_grace(run)

    async def listen(self, run: Run, after_id: int, framing: Framing = Framing.NAMED) -> EventStream:
        with self.attached(run):
            async for chunk in run.follow(after_id, self.heartbeat_s, framing):
                yield chunk

    def cancel(self, run: Run) -> bool:
        if run.done or run.task is None:
            return False
        run.task.cancel()
        return True

    async def shutdown(self) -> None:
        """Cancel what is still running and wait for each to record its end."""
        tasks = [run.task for run in self.runs.values() if run.task is not None and not run.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _arm_grace(self, run: Run) -> None:
        async def expire() -> None:
            await asyncio.sleep(self.grace_s)
            if run.listeners == 0 and not run.done:
                logger.info("no listener for %.0f s: cancelling reply %s", self.grace_s, run.message_id)
                self.cancel(run)

        run._grace_timer = asyncio.create_task(expire())

    def _evict(self) -> None:
        now = time.monotonic()
        for message_id, run in list(self.runs.items()):
            if run.done and run.finished_at is not None and now - run.finished_at > self.retention_s:
                del self.runs[message_id]
                if self._by_conversation.get(run.conversation_id) == message_id:
                    del self._by_conversation[run.conversation_id]
