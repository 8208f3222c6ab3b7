"""Runs one conversation reply: streams its events to the run's buffer, writes its partial text (and a heartbeat)
from a task of its own so that a slow database never delays a token, and stores it at the end whatever happens
(completed, length, cancelled, interrupted, failed). The final event reaches listeners at once; the final write
is retried, in a task no cancellation reaches, until the database takes it (an outage), or stored as failed at once
if the database refuses it (bad data); a stream ends once it has landed (or after a bounded wait), so that what a
client reads after the stream is what was stored."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from engine import EngineUnavailableError, GenerationFailedError, InvalidRequestError
from server.conversations.run import Run
from server.generation.generator import Generation, Interrupted
from server.sse import ReplyEvent
from storage import Database
from storage.models import MessageStatus
from storage.repository import Messages, refused, storable_text

logger = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)

FIRST_RETRY_S = 0.2
MAX_RETRY_S = 5.0
LENGTH = "length"
CANCELLED = "cancelled"
INTERRUPTED = "interrupted"


@dataclass(slots=True)
class FinalReply:
    message_id: uuid.UUID
    text: str
    status: MessageStatus
    finish_reason: str | None
    completion_tokens: int


async def store_until_taken(attempt: Callable[[], Awaitable[None]], on_refused: Callable[[str], bool], *,
                            timeout_s: float, what: str) -> None:
    """A final write, retried with backoff while the database does not answer, until it takes it (or `timeout_s`
    passes, logged: the reconciler then finds the row stale). A write the database refuses (bad data) is not
    retried as it was: `on_refused(reason)` changes what the next attempt writes and says whether to try it (False:
    give up). `reason` is the driver's message alone: the statement's parameters (the text) stay out of logs."""
    deadline = time.monotonic() + timeout_s
    delay = FIRST_RETRY_S
    while True:
        try:
            await attempt()
            return
        except Exception as exc:  # any driver failure: connection refused, reset, timeout, server gone, refusal
            if refused(exc):
                if not on_refused(str(getattr(exc, "orig", None) or type(exc).__name__)):
                    return
                continue
            if time.monotonic() + delay > deadline:
                logger.error("could not store %s within %.0f s: %s", what, timeout_s, type(exc).__name__)
                return
            logger.warning("storing %s failed (%s); retrying in %.1f s", what, type(exc).__name__, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_S)


class FallbackOnRefusal:
    """A final write's `on_refused` (store_until_taken): the first refusal is logged and answered with the fallback
    (`falling_back` turns True: the attempt writes the fallback from then on); a refusal of the fallback, or of a
    write with none (`fallback` None: it is already as bare as one), is logged and given up."""

    def __init__(self, what: str, fallback: str | None, bare: str) -> None:
        """`what` names the write, `fallback` says what the fallback stores, `bare` what it leaves out (for the
        log)."""
        self.what = what
        self.fallback = fallback
        self.bare = bare
        self.falling_back = False

    def __call__(self, reason: str) -> bool:
        if self.falling_back or self.fallback is None:
            logger.error("the database refused %s even %s: %s", self.what, self.bare, reason)
            return False
        logger.error("the database refused %s: %s: %s", self.what, self.fallback, reason)
        self.falling_back = True
        return True


class FinalWrites(Generic[K]):
    """The final writes still running, each in a task of its own: drained at shutdown; `storing` holds the keys of
    those that have not landed yet (the reconciler leaves their rows alone)."""

    def __init__(self) -> None:
        self.pending: set[asyncio.Task[None]] = set()
        self.storing: set[K] = set()

    async def run(self, run: Run, key: K, finish: Coroutine[Any, Any, None]) -> None:
        """Await `finish` in a task of its own: a second cancellation (grace timer, cancel, DELETE, shutdown) that
        reaches the caller cannot stop it."""
        finishing = asyncio.create_task(finish)
        run.finishing = True
        self.pending.add(finishing)
        self.storing.add(key)
        finishing.add_done_callback(self.pending.discard)
        finishing.add_done_callback(lambda _: self.storing.discard(key))
        await asyncio.shield(finishing)

    async def drain(self, timeout_s: float) -> None:
        """Wait for the final writes still running (shutdown)."""
        if self.pending:
            await asyncio.wait(set(self.pending), timeout=timeout_s)


class ReplyWriter:
    def __init__(self, database: Database, *, flush_s: float, heartbeat_s: float, store_timeout_s: float) -> None:
        self.database = database
        self.flush_s = flush_s
        self.heartbeat_s = heartbeat_s
        self.store_timeout_s = store_timeout_s
        self.final_writes = FinalWrites[uuid.UUID]()

    async def produce(self, run: Run, generation: Generation) -> None:
        """Generate the reply into `run`; then publish its final event and hand its storage to a task of its own."""
        parts: list[str] = []
        finish_reason: str | None = None
        status = MessageStatus.FAILED
        error: str | None = None
        flusher = _Flusher(self.database, run.message_id, self.flush_s, self.heartbeat_s)
        try:
            async for step in generation:
                choice = step.choices[0]
                if choice.content:
                    # Streamed as it will be stored (NUL cannot be): the stream and the stored reply agree.
                    delta = storable_text(choice.content)
                    parts.append(delta)
                    await run.publish(ReplyEvent.DELTA, {"message_id": str(run.message_id), "delta": delta})
                if choice.finish_reason is not None:
                    finish_reason = choice.finish_reason
                flusher.update(parts, generation.tally.completion_tokens)
            status = MessageStatus.LENGTH if finish_reason == LENGTH else MessageStatus.COMPLETED
        except asyncio.CancelledError:
            status, finish_reason = MessageStatus.CANCELLED, CANCELLED
        except Interrupted as exc:
            status, finish_reason, error = MessageStatus.INTERRUPTED, INTERRUPTED, str(exc)
        except (InvalidRequestError, EngineUnavailableError, GenerationFailedError) as exc:
            error = str(exc)
        except Exception as exc:  # the engine broke mid-reply: store what there is as failed
            logger.exception("reply %s failed", run.message_id)
            error = f"generation failed: {type(exc).__name__}"
        final = FinalReply(run.message_id, "".join(parts), status, finish_reason, generation.tally.completion_tokens)
        await self.final_writes.run(run, final.message_id, self._finish(run, generation, flusher, final, error))

    async def _finish(self, run: Run, generation: Generation, flusher: _Flusher, final: FinalReply,
                      error: str | None) -> None:
        try:
            await generation.close()
        except Exception:  # the reply's end (final event, stored text) must not depend on the engine or limits
            logger.exception("closing the generation of reply %s failed", run.message_id)
        summary = {"message_id": str(final.message_id), "status": final.status, "finish_reason": final.finish_reason,
                   "prompt_tokens": generation.prepared.prompt.num_tokens,
                   "completion_tokens": final.completion_tokens}
        # Listeners hear the end at once, whatever the database is doing.
        if error is not None:
            await run.publish(ReplyEvent.ERROR, {**summary, "error": error}, final=True)
        else:
            await run.publish(ReplyEvent.COMPLETED, summary, final=True)
        await flusher.stop()
        try:
            await self.store_final(final)
        finally:
            run.stored.set()  # a stream's end waits for this (bounded): see Run.settled

    async def store_final(self, final: FinalReply) -> None:
        """Retried until the database takes it (store_until_taken; past store_timeout_s the reconciler finds the row
        stale and keeps its last flushed text). A write the database refuses (bad data) is stored failed at once,
        keeping its last flushed text."""
        refusals = FallbackOnRefusal(f"reply {final.message_id} ({final.status}, {final.completion_tokens} tokens)",
                                     "stored failed with its last flushed text", "without its text")

        async def attempt() -> None:
            # The fallback keeps the text last flushed (content None) and stores the reply failed.
            status, finish_reason = ((MessageStatus.FAILED, None) if refusals.falling_back
                                     else (final.status, final.finish_reason))
            async with self.database.session() as session:
                await Messages(session).finish(final.message_id,
                                               content=None if refusals.falling_back else final.text,
                                               status=status, finish_reason=finish_reason,
                                               completion_tokens=final.completion_tokens)
                await session.commit()

        await store_until_taken(attempt, refusals, timeout_s=self.store_timeout_s, what=refusals.what)


class Flusher:
    """Writes what a run has so far from a task of its own, at most every `interval_s` when it changed, and touches
    the row every `heartbeat_s` even without a change (a run waiting in the engine's queue is alive; a row whose
    heartbeat stopped belongs to a replica that died, and the reconciler ends it). `write` reads the run's state
    when it is called; a failed write is logged, and the final write carries what it would have."""

    def __init__(self, write: Callable[[], Awaitable[None]], interval_s: float, heartbeat_s: float,
                 what: str) -> None:
        self.write = write
        self.interval_s = interval_s
        self.heartbeat_s = heartbeat_s
        self.what = what
        self.changed = False
        self._stopping = asyncio.Event()
        self.task = asyncio.create_task(self._loop())

    def touched(self) -> None:
        self.changed = True

    async def _loop(self) -> None:
        last_write = time.monotonic()
        while True:
            try:
                await asyncio.wait_for(self._stopping.wait(), self.interval_s)
                return
            except TimeoutError:
                pass
            if self.changed or time.monotonic() - last_write >= self.heartbeat_s:
                self.changed = False
                try:
                    await self.write()
                except Exception:
                    logger.warning("interim write of %s failed; the final write will carry it", self.what)
                last_write = time.monotonic()

    async def stop(self) -> None:
        """Ends the loop after the write in progress, if any: the final write must land after any interim one."""
        self._stopping.set()
        await asyncio.gather(self.task, return_exceptions=True)


class _Flusher(Flusher):
    """A reply's partial text and its token count, written as the reply in progress."""

    def __init__(self, database: Database, message_id: uuid.UUID, interval_s: float, heartbeat_s: float) -> None:
        self.database = database
        self.message_id = message_id
        self.parts: list[str] = []
        self.completion_tokens = 0
        super().__init__(self._write, interval_s, heartbeat_s, f"reply {message_id}")

    def update(self, parts: list[str], completion_tokens: int) -> None:
        self.parts = parts
        self.completion_tokens = completion_tokens
        self.touched()

    async def _write(self) -> None:
        async with self.database.session() as session:
            await Messages(session).finish(self.message_id, content="".join(self.parts),
                                           status=MessageStatus.IN_PROGRESS, finish_reason=None,
                                           completion_tokens=self.completion_tokens)
            await session.commit()
