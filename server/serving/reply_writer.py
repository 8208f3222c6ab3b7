"""Runs one conversation reply: streams its events to the run's buffer and stores it whatever happens (completed,
length, cancelled, failed), writing partial text from a task of its own so that a slow database never delays a
token."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import anyio
from sqlalchemy.exc import SQLAlchemyError

from engine import EngineUnavailableError, GenerationFailedError, InvalidRequestError
from server.serving.generation import Generation
from server.serving.replies import Run
from server.serving.sse import ReplyEvent
from storage import Database
from storage.models import MessageStatus
from storage.repository import Messages

logger = logging.getLogger(__name__)

FINAL_WRITE_ATTEMPTS = 4
FINAL_WRITE_BACKOFF_S = 0.2
LENGTH = "length"
CANCELLED = "cancelled"


class ReplyWriter:
    def __init__(self, database: Database, flush_s: float) -> None:
        self.database = database
        self.flush_s = flush_s

    async def produce(self, run: Run, generation: Generation) -> None:
        """Generate the reply into `run`, then store it and publish its final event (shielded from cancellation)."""
        parts: list[str] = []
        finish_reason: str | None = None
        status = MessageStatus.FAILED
        error: str | None = None
        flusher = _Flusher(self.database, run.message_id, self.flush_s)
        try:
            async for step in generation:
                choice = step.choices[0]
                if choice.content:
                    parts.append(choice.content)
                    await run.publish(ReplyEvent.DELTA, {"message_id": str(run.message_id), "delta": choice.content})
                if choice.finish_reason is not None:
                    finish_reason = choice.finish_reason
                flusher.maybe_flush(parts, generation.tally.completion_tokens)
            status = MessageStatus.LENGTH if finish_reason == LENGTH else MessageStatus.COMPLETED
        except asyncio.CancelledError:
            status, finish_reason = MessageStatus.CANCELLED, CANCELLED
        except (InvalidRequestError, EngineUnavailableError, GenerationFailedError) as exc:
            error = str(exc)
        except Exception as exc:  # the engine broke mid-reply: store what there is as failed
            logger.exception("reply %s failed", run.message_id)
            error = f"generation failed: {type(exc).__name__}"
        text = "".join(parts)
        with anyio.CancelScope(shield=True):
            await generation.close()
            completion_tokens = generation.tally.completion_tokens
            await flusher.stop()
            await self._store_final(run.message_id, text, status, finish_reason, completion_tokens)
            summary = {"message_id": str(run.message_id), "status": status, "finish_reason": finish_reason,
                       "prompt_tokens": generation.prepared.prompt.num_tokens,
                       "completion_tokens": completion_tokens}
            if status == MessageStatus.FAILED:
                await run.publish(ReplyEvent.ERROR, {**summary, "error": error}, final=True)
            else:
                await run.publish(ReplyEvent.COMPLETED, summary, final=True)

    async def _store_final(self, message_id: uuid.UUID, text: str, status: MessageStatus, finish_reason: str | None,
                           completion_tokens: int) -> None:
        for attempt in range(FINAL_WRITE_ATTEMPTS):
            try:
                async with self.database.session() as session:
                    await Messages(session).finish(message_id, content=text, status=status,
                                                   finish_reason=finish_reason, completion_tokens=completion_tokens)
                    await session.commit()
                return
            except SQLAlchemyError:
                if attempt == FINAL_WRITE_ATTEMPTS - 1:
                    logger.exception("could not store reply %s (%s, %d tokens) after %d attempts", message_id,
                                     status, completion_tokens, FINAL_WRITE_ATTEMPTS)
                    return
                await asyncio.sleep(FINAL_WRITE_BACKOFF_S * 2 ** attempt)


class _Flusher:
    """Writes the partial reply every `interval_s` from a task of its own: a slow database never blocks a token."""

    def __init__(self, database: Database, message_id: uuid.UUID, interval_s: float) -> None:
        self.database = database
        self.message_id = message_id
        self.interval_s = interval_s
        self.last = time.monotonic()
        self.task: asyncio.Task[None] | None = None

    def maybe_flush(self, parts: list[str], completion_tokens: int) -> None:
        now = time.monotonic()
        if now - self.last < self.interval_s or (self.task is not None and not self.task.done()):
            return
        self.last = now
        self.task = asyncio.create_task(self._write("".join(parts), completion_tokens))

    async def _write(self, text: str, completion_tokens: int) -> None:
        try:
            async with self.database.session() as session:
                await Messages(session).finish(self.message_id, content=text, status=MessageStatus.IN_PROGRESS,
                                               finish_reason=None, completion_tokens=completion_tokens)
                await session.commit()
        except SQLAlchemyError:
            logger.warning("interim write of reply %s failed; the final write will carry the text", self.message_id)

    async def stop(self) -> None:
        # The final write must land after any interim one, never before it.
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)
