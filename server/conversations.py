"""Conversation replies: commit the user's message, generate in a task of its own, stream its events, and store the
reply whatever happens (completed, length, cancelled, failed) without letting the database slow the tokens."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

import anyio
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from engine import ChatEngine, EngineUnavailableError, InvalidRequestError, SamplingOptions
from server.errors import APIError
from server.generations import Registry, Run
from server.history import assemble, visible_turns
from storage import Database
from storage.repository import Conversations, Messages

logger = logging.getLogger(__name__)

FINAL_WRITE_ATTEMPTS = 4


@dataclass(slots=True)
class Started:
    run: Run
    user_message_id: uuid.UUID
    prompt_tokens: int
    dropped_turns: int


class ConversationService:
    def __init__(self, engine: ChatEngine, database: Database, registry: Registry, *, flush_s: float,
                 default_max_tokens: int) -> None:
        self.engine = engine
        self.database = database
        self.registry = registry
        self.flush_s = flush_s
        self.default_max_tokens = default_max_tokens
        self._posting: set[uuid.UUID] = set()

    async def post(self, owner_id: uuid.UUID, conversation_id: uuid.UUID, content: str,
                   options: SamplingOptions) -> Started:
        """Commit the user's message and an in-progress reply, then start generating. 409 while a reply runs."""
        if conversation_id in self._posting or self.registry.running(conversation_id):
            raise APIError(409, "a reply is still being generated in this conversation; wait for it or cancel it",
                           param="conversation_id")
        # Marked from here until the reply's task is started: a second post meanwhile gets the 409 above.
        self._posting.add(conversation_id)
        try:
            return await self._post(owner_id, conversation_id, content, options)
        finally:
            self._posting.discard(conversation_id)

    async def _post(self, owner_id: uuid.UUID, conversation_id: uuid.UUID, content: str,
                    options: SamplingOptions) -> Started:
        async with self.database.session() as session:
            conversation = await Conversations(session).get(owner_id, conversation_id)
            if conversation is None:
                raise APIError(404, "no such conversation", param="conversation_id")
            history = await Messages(session).history(conversation_id)
        if any(m.status == "in_progress" for m in history):
            raise APIError(409, "a reply is still being generated in this conversation (on another replica)",
                           param="conversation_id")
        turns = visible_turns(history) + [{"role": "user", "content": content}]
        assembled = await assemble(self.engine, turns, options.max_tokens or self.default_max_tokens)
        options.max_tokens = assembled.max_tokens
        try:
            async with self.database.session() as session:
                messages = Messages(session)
                user = await messages.append(conversation_id, "user", content,
                                             prompt_tokens=assembled.prompt.num_tokens)
                reply = await messages.append(conversation_id, "assistant", "", status="in_progress",
                                              prompt_tokens=assembled.prompt.num_tokens)
                if not conversation.title:
                    await Conversations(session).rename(owner_id, conversation_id, content[:80])
                await session.commit()
        except IntegrityError:
            raise APIError(409, "another message was posted to this conversation at the same time",
                           param="conversation_id") from None
        except SQLAlchemyError:
            logger.exception("could not store the user's message; nothing was generated")
            raise APIError(503, "the message could not be stored; nothing was generated",
                           headers={"Retry-After": "1"}) from None
        run = Run(reply.id, conversation_id, owner_id)
        self.registry.start(run, lambda run: self._produce(run, assembled.prompt, options))
        return Started(run, user.id, assembled.prompt.num_tokens, assembled.dropped_turns)

    async def _produce(self, run: Run, prompt: Any, options: SamplingOptions) -> None:
        parts: list[str] = []
        completion_tokens = 0
        finish_reason: str | None = None
        status = "failed"
        error: str | None = None
        flusher = _Flusher(self.database, run.message_id, self.flush_s)
        try:
            async for step in self.engine.generate(prompt, options, str(run.message_id)):
                choice = step.choices[0]
                completion_tokens += choice.num_tokens
                if choice.text:
                    parts.append(choice.text)
                    await run.publish("message.delta", {"message_id": str(run.message_id), "delta": choice.text})
                if choice.finish_reason is not None:
                    finish_reason = choice.finish_reason
                flusher.maybe_flush(parts, completion_tokens)
            status = "length" if finish_reason == "length" else "completed"
        except asyncio.CancelledError:
            status, finish_reason = "cancelled", "cancelled"
        except (InvalidRequestError, EngineUnavailableError) as exc:
            error = str(exc)
        except Exception as exc:  # the engine broke mid-reply: store what there is as failed
            logger.exception("reply %s failed", run.message_id)
            error = f"generation failed: {type(exc).__name__}"
        text = "".join(parts)
        with anyio.CancelScope(shield=True):
            await flusher.stop()
            await self._store_final(run.message_id, text, status, finish_reason, completion_tokens)
            summary = {"message_id": str(run.message_id), "status": status, "finish_reason": finish_reason,
                       "prompt_tokens": prompt.num_tokens, "completion_tokens": completion_tokens}
            if status == "failed":
                await run.publish("message.error", {**summary, "error": error}, final=True)
            else:
                await run.publish("message.completed", summary, final=True)

    async def _store_final(self, message_id: uuid.UUID, text: str, status: str, finish_reason: str | None,
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
                await asyncio.sleep(0.2 * 2 ** attempt)


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
                await Messages(session).finish(self.message_id, content=text, status="in_progress",
                                               finish_reason=None, completion_tokens=completion_tokens)
                await session.commit()
        except SQLAlchemyError:
            logger.warning("interim write of reply %s failed; the final write will carry the text", self.message_id)

    async def stop(self) -> None:
        # The final write must land after any interim one, never before it.
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)
