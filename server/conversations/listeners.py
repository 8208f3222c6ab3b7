"""SSE listeners that cost nothing while they wait: each waits on a future that an event or one shared heartbeat
clock resolves (no sleep loop, no timer per listener), counted and capped per caller (key), per user and in all,
and closed with a reconnect event after an idle time."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from enum import Enum, auto

from server.exceptions import RateLimited, Unavailable
from server.telemetry.metrics import sse_listeners

# The clock ticks at most once a second, and at least four times per heartbeat interval.
MAX_TICK_S = 1.0
LISTENER_RETRY_AFTER_S = 5
# Idle listeners close between 90% and 100% of the idle timeout, so that tabs opened together do not reconnect
# together.
IDLE_JITTER = 0.1


class Wake(Enum):
    """Why a waiting listener woke up."""

    EVENT = auto()      # what it waits for happened: read the new events
    HEARTBEAT = auto()  # nothing written for a heartbeat interval: write a comment
    IDLE = auto()       # idle past the idle timeout: tell the client to reconnect, then close


class Signal:
    """Wakes every listener waiting on it at once (like an asyncio.Event that re-arms itself on each notify)."""

    __slots__ = ("waiters",)

    def __init__(self) -> None:
        self.waiters: set[asyncio.Future[Wake]] = set()

    def notify(self) -> None:
        waiters, self.waiters = self.waiters, set()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(Wake.EVENT)


class Listener:
    """One open SSE listener: when it last wrote (heartbeats are due from then) and last saw an event (idle from
    then), and what it waits on now."""

    __slots__ = ("closed", "heartbeat_s", "idle_after_s", "last_event", "last_write", "subject", "user", "waiting")

    def __init__(self, subject: str, user: str, now: float, idle_after_s: float | None, heartbeat_s: float) -> None:
        self.subject = subject
        self.user = user
        self.heartbeat_s = heartbeat_s
        self.last_write = now
        self.last_event = now
        self.idle_after_s = idle_after_s  # None: never idle (it follows a running reply)
        self.waiting: asyncio.Future[Wake] | None = None
        self.closed = False

    def wrote(self, now: float, *, event: bool) -> None:
        self.last_write = now
        if event:
            self.last_event = now


class Listeners:
    """Every SSE listener of this process. A heartbeat clock ticks (once a second) while any is open and visits each
    listener about once per heartbeat interval (a timer wheel: one bucket per tick), so an idle listener costs
    one write per interval and nothing in between."""

    def __init__(self, *, heartbeat_s: float, idle_timeout_s: float, max_total: int, max_per_caller: int,
                 idle_heartbeat_s: float | None = None, max_per_user: int = 0) -> None:
        self.heartbeat_s = heartbeat_s
        # Listeners that wait for something that may never come (an idle tab's next reply) heartbeat less often:
        # their keep-alive is most of what 10,000 of them cost.
        self.idle_heartbeat_s = idle_heartbeat_s or heartbeat_s
        self.tick_s = min(MAX_TICK_S, heartbeat_s / 4, self.idle_heartbeat_s / 4)
        self.idle_timeout_s = idle_timeout_s  # 0: never closed for idleness
        self.max_total = max_total            # 0: no cap
        self.max_per_caller = max_per_caller  # 0: no cap
        # All of a user's keys and tokens together: minting keys does not multiply the per-key cap. 0: no cap.
        self.max_per_user = max_per_user
        self.open_count = 0
        self._per_subject: Counter[str] = Counter()
        self._per_user: Counter[str] = Counter()
        self._wheel: dict[int, list[Listener]] = {}
        self._clock: asyncio.Task[None] | None = None

    def open(self, subject: str, *, user: str | None = None, may_idle: bool, capped: bool = True) -> Listener:
        """A new listener for `subject` (the caller's key or user) of `user` (the user behind it; default: the
        subject), or RateLimited / Unavailable past a cap.
        `may_idle`: it waits for something that may never come (the next reply) and closes after the idle time.
        `capped=False`: counted but never refused (the stream of a generation that was already admitted)."""
        user = user or subject
        if capped:
            self._check_caps(subject, user)
        loop = asyncio.get_running_loop()
        idle_after_s = None
        if may_idle and self.idle_timeout_s:
            idle_after_s = self.idle_timeout_s * random.uniform(1 - IDLE_JITTER, 1.0)
        listener = Listener(subject, user, loop.time(), idle_after_s,
                            self.idle_heartbeat_s if may_idle else self.heartbeat_s)
        self.open_count += 1
        self._per_subject[subject] += 1
        self._per_user[user] += 1
        sse_listeners.inc()
        self._schedule(listener, listener.last_write + listener.heartbeat_s)
        if self._clock is None:
            self._clock = loop.create_task(self._run_clock(), name="sse-heartbeat-clock")
        return listener

    def _check_caps(self, subject: str, user: str) -> None:
        if self.max_total and self.open_count >= self.max_total:
            raise Unavailable(f"this server holds its maximum of {self.max_total} event streams; retry later",
                              retry_after_s=LISTENER_RETRY_AFTER_S)
        if self.max_per_caller and self._per_subject[subject] >= self.max_per_caller:
            raise RateLimited(f"too many open event streams for this key (at most {self.max_per_caller}); close "
                              "one first", retry_after_s=LISTENER_RETRY_AFTER_S)
        if self.max_per_user and self._per_user[user] >= self.max_per_user:
            raise RateLimited(f"too many open event streams for this user, all keys together (at most "
                              f"{self.max_per_user}); close one first", retry_after_s=LISTENER_RETRY_AFTER_S)

    def close(self, listener: Listener) -> None:
        """Idempotent: the stream's own cleanup and the response's finalizer both call it."""
        if listener.closed:
            return
        listener.closed = True
        self.open_count -= 1
        sse_listeners.dec()
        self._per_subject[listener.subject] -= 1
        if self._per_subject[listener.subject] <= 0:
            del self._per_subject[listener.subject]
        self._per_user[listener.user] -= 1
        if self._per_user[listener.user] <= 0:
            del self._per_user[listener.user]
        if listener.waiting is not None and not listener.waiting.done():
            listener.waiting.cancel()

    async def wait(self, listener: Listener, signal: Signal) -> Wake:
        """Until `signal` fires, a heartbeat is due, or the listener has been idle too long."""
        waiter: asyncio.Future[Wake] = asyncio.get_running_loop().create_future()
        signal.waiters.add(waiter)
        listener.waiting = waiter
        try:
            return await waiter
        finally:
            listener.waiting = None
            signal.waiters.discard(waiter)

    def wrote(self, listener: Listener, *, event: bool) -> None:
        listener.wrote(asyncio.get_running_loop().time(), event=event)

    def _schedule(self, listener: Listener, due: float) -> None:
        self._wheel.setdefault(int(due / self.tick_s) + 1, []).append(listener)

    async def _run_clock(self) -> None:
        loop = asyncio.get_running_loop()
        tick = int(loop.time() / self.tick_s)
        try:
            while self.open_count > 0 or self._wheel:
                await asyncio.sleep(self.tick_s)
                now = loop.time()
                current = int(now / self.tick_s)
                for due_tick in range(tick + 1, current + 1):
                    for listener in self._wheel.pop(due_tick, ()):
                        self._visit(listener, now)
                tick = current
        finally:
            self._clock = None

    def _visit(self, listener: Listener, now: float) -> None:
        """Once per heartbeat interval per listener: wake it if a heartbeat or the idle close is due."""
        if listener.closed:
            return
        idle_at = listener.last_event + listener.idle_after_s if listener.idle_after_s is not None else None
        due = listener.last_write + listener.heartbeat_s
        if idle_at is not None:
            due = min(due, idle_at)
        if due > now:
            self._schedule(listener, due)
            return
        waiter = listener.waiting
        if waiter is None or waiter.done():
            self._schedule(listener, now + self.tick_s)  # busy writing: look again at the next tick
            return
        waiter.set_result(Wake.IDLE if idle_at is not None and idle_at <= now else Wake.HEARTBEAT)
        self._schedule(listener, now + listener.heartbeat_s)

    async def stop(self) -> None:
        if self._clock is not None:
            self._clock.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._clock
