"""Conversations: history kept server-side, each new message answered by a reply generated on the one generation
path in a task of its own, streamed to listeners, resumable, cancellable, and stored whatever happens."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from engine import EngineClient, InvalidRequestError, PromptTooLongError
from server.adapters.catalog import ModelCatalog
from server.conversations.history import assemble, visible_turns
from server.conversations.listeners import Listener, Wake
from server.conversations.pins import PinningStore
from server.conversations.registry import Registry
from server.conversations.run import Run
from server.conversations.store import TITLE_FROM_MESSAGE_CHARS, ConversationLimits
from server.conversations.writer import ReplyWriter
from server.exceptions import Conflict, ConversationBusy, NotFound, Unavailable
from server.generation.generator import Generator
from server.generation.refusals import engine_refusal
from server.security.auth import Principal
from server.security.cache_salt import CacheSalter
from server.sse import HEARTBEAT, RECONNECT, EventStream, Framing, ReplyEvent, frame_reply_event
from server.telemetry.metrics import sse_streams_resumed
from storage import Database
from storage.models import Conversation, Message, MessageRole, MessageStatus
from storage.repository import Conversations, Messages

logger = logging.getLogger(__name__)

STORE_RETRY_AFTER_S = 1
# Cancelling a reply: how long to wait for its final status to be stored (here, or by another replica).
REMOTE_STORE_WAIT_S = 10.0
REMOTE_STORE_POLL_S = 0.1
# Resuming on a replica that mirrors the reply: how long it may take to receive the events the client saw.
MIRROR_CATCH_UP_S = 2.0


@dataclass(frozen=True, slots=True)
class ReplyRequest:
    """A user message and how to generate its reply, whichever API dialect asked: the generation fields as the
    engine takes them (`max_tokens` unset means the server's default for replies)."""

    content: str
    engine_fields: dict[str, Any]
    # The model the reply is generated with: the base model or one of its LoRA adapters (None: the conversation's
    # pinned model, else the base model).
    model: str | None = None


@dataclass(slots=True)
class Started:
    run: Run
    user_message_id: uuid.UUID
    dropped_turns: int


@dataclass(slots=True)
class Following:
    """A listener's event stream, and what frees its place however the response ends (even before it started)."""

    message_id: uuid.UUID | None
    events: EventStream
    close: Callable[[], Awaitable[None]]


class ConversationService(PinningStore):
    def __init__(self, *, engine: EngineClient, models: ModelCatalog, database: Database, registry: Registry,
                 generator: Generator, writer: ReplyWriter, default_max_tokens: int, stale_after_s: float,
                 salter: CacheSalter, limits: ConversationLimits | None = None) -> None:
        super().__init__(database, limits or ConversationLimits(), models)
        self.engine = engine
        self.registry = registry
        self.generator = generator
        self.writer = writer
        self.default_max_tokens = default_max_tokens
        self.stale_after_s = stale_after_s
        self.salter = salter
        # Since when this replica has reached the database without a failure (None: it is failing now).
        self._reachable_since: float | None = time.monotonic() - stale_after_s
        self._posting: set[uuid.UUID] = set()

    async def check_database(self) -> bool:
        """The reconciler's probe: keeps `_reachable_since` (see reconcile)."""
        reachable = await self.database.ping()
        if not reachable:
            self.database_failed()
        elif self._reachable_since is None:
            self._reachable_since = time.monotonic()
        return reachable

    def database_failed(self) -> None:
        """The database failed a statement of the reconciler's: reachable again only from the next probe that
        passes."""
        self._reachable_since = None

    def database_settled(self) -> bool:
        """Whether the database has been reachable for stale_after_s: only then may a reconciler end what a
        heartbeat no longer keeps (after an outage, live replicas' heartbeats get the time to land first)."""
        since = self._reachable_since
        return since is not None and time.monotonic() - since >= self.stale_after_s

    # --- conversations ------------------------------------------------------------------------------------------

    async def delete(self, owner_id: uuid.UUID, conversation_id: uuid.UUID) -> None:
        await self.get(owner_id, conversation_id)
        run = await self.registry.find_current(conversation_id, owner_id)
        if run is not None:
            await self._cancel(run)
        async with self.database.session() as session:
            deleted = await Conversations(session).delete(owner_id, conversation_id)
            await session.commit()
        if not deleted:
            raise NotFound("no such conversation", param="conversation_id")

    # --- replies ------------------------------------------------------------------------------------------------

    async def post(self, principal: Principal, conversation_id: uuid.UUID, spec: ReplyRequest,
                   usage_sink: MutableMapping[str, Any]) -> Started:
        """Commit the user's message and an in-progress reply, then start generating. 409 while a reply runs."""
        # Owner first: another user's conversation does not exist, whether a reply runs in it or not.
        conversation = await self.get(principal.user_id, conversation_id)
        if conversation_id in self._posting or self.registry.running(conversation_id):
            raise ConversationBusy("a reply is still being generated in this conversation; wait for it or cancel it",
                                   param="conversation_id")
        # Marked from here until the reply's task is started: a second post meanwhile gets the 409 above.
        self._posting.add(conversation_id)
        try:
            return await self._post(principal, conversation, spec, usage_sink)
        finally:
            self._posting.discard(conversation_id)

    async def _post(self, principal: Principal, conversation: Conversation, spec: ReplyRequest,
                    usage_sink: MutableMapping[str, Any]) -> Started:
        owner_id = principal.user_id
        conversation_id = conversation.id
        served = self.reply_model(principal, conversation, spec.model)
        # Only what the prompt could hold is read (posts are one at a time: a reply in progress is the newest).
        recent = await self.recent(conversation_id, self.engine.max_model_len)
        if any(m.status == MessageStatus.IN_PROGRESS for m in recent.messages):
            # A reply whose replica died would block the conversation forever: reconciled here if stale.
            if await self.reconcile(conversation_id):
                recent = await self.recent(conversation_id, self.engine.max_model_len)
            if any(m.status == MessageStatus.IN_PROGRESS for m in recent.messages):
                raise ConversationBusy("a reply is still being generated in this conversation (on another "
                                       "replica)", param="conversation_id")
        await self.check_room(conversation_id, spec.content)
        turns = [*visible_turns(recent.messages), {"role": MessageRole.USER, "content": spec.content}]
        reply_id = uuid.uuid4()
        try:
            fields = {"max_tokens": self.default_max_tokens, **spec.engine_fields}
            # Admission and the token budget refuse before the history is rendered (up to a few times to trim it).
            await self.generator.precheck(principal, choices=fields.get("n") or 1, priority=fields.get("priority") or 0,
                                          min_tokens=fields["max_tokens"] * (fields.get("n") or 1))
            self.salter.apply(fields, principal)
            assembled = await assemble(self.engine, turns, fields, str(reply_id))
            assembled.prepared.adapter = served.adapter
            # Deferred: the engine gets the request only once the turn below is committed (fairness on or off).
            generation = await self.generator.start(principal, assembled.prepared, usage_sink=usage_sink,
                                                    deferred=True)
        except (PromptTooLongError, InvalidRequestError) as exc:
            raise engine_refusal(exc, "content") from None
        try:
            user = await self._store_turn(owner_id, conversation, spec.content, reply_id,
                                          assembled.prepared.prompt.num_tokens)
        except BaseException:
            await generation.close()
            raise
        run = self.registry.new_run(reply_id, conversation_id, owner_id)
        self.registry.start(run, lambda run: self.writer.produce(run, generation))
        # Dropped: the turns left out of the prompt, whether unread (too old to fit) or cut from what was read.
        return Started(run, user.id, recent.unread + assembled.dropped_turns)

    async def _store_turn(self, owner_id: uuid.UUID, conversation: Conversation, content: str, reply_id: uuid.UUID,
                          prompt_tokens: int) -> Message:
        """The user's message and the in-progress reply, committed together before anything is generated."""
        try:
            async with self.database.session() as session:
                messages = Messages(session)
                user = await messages.append(conversation.id, MessageRole.USER, content, prompt_tokens=prompt_tokens)
                await messages.append(conversation.id, MessageRole.ASSISTANT, "", status=MessageStatus.IN_PROGRESS,
                                      prompt_tokens=prompt_tokens, message_id=reply_id)
                if not conversation.title:
                    await Conversations(session).rename(owner_id, conversation.id,
                                                        content[:TITLE_FROM_MESSAGE_CHARS])
                await session.commit()
        except IntegrityError:
            raise ConversationBusy("another message was posted to this conversation at the same time",
                                   param="conversation_id") from None
        except SQLAlchemyError:
            raise Unavailable("the message could not be stored; nothing was generated",
                              retry_after_s=STORE_RETRY_AFTER_S) from None
        return user

    async def stored_pair(self, conversation_id: uuid.UUID, started: Started) -> tuple[Message, Message]:
        """The user's message and the reply as stored (once the reply has ended)."""
        async with self.database.session() as session:
            messages = Messages(session)
            user_message = await messages.get(conversation_id, started.user_message_id)
            reply = await messages.get(conversation_id, started.run.message_id)
        if user_message is None or reply is None:
            raise NotFound("the conversation was deleted", param="conversation_id")
        return user_message, reply

    def listen(self, principal: Principal, run: Run, framing: Framing = Framing.NAMED) -> Following:
        """The stream of a reply just posted: counted as a listener but never refused (the post was admitted)."""
        listener = self.registry.listeners.open(principal.subject, user=principal.tenant, may_idle=False,
                                                capped=False)
        return self._following(run.message_id, listener, self.registry.listen(run, 0, listener, framing))

    def _following(self, message_id: uuid.UUID | None, listener: Listener, events: EventStream) -> Following:
        async def close() -> None:
            self.registry.listeners.close(listener)
        return Following(message_id, events, close)

    async def wait(self, run: Run) -> None:
        """Until the reply ends, counting as a listener meanwhile (its grace clock stops). Cancelling this wait
        leaves the reply running."""
        with self.registry.attached(run):
            await run.wait()

    async def resume(self, principal: Principal, conversation_id: uuid.UUID, message_id: uuid.UUID | None,
                     after_id: int, *, message_id_given: bool) -> Following:
        """Every event after `after_id`, then the live rest; a reply not held here is replayed from storage."""
        owner_id = principal.user_id
        listener = self.registry.listeners.open(principal.subject, user=principal.tenant, may_idle=False)
        try:
            return self._following(*await self._resume(owner_id, conversation_id, message_id, after_id,
                                                        message_id_given, listener))
        except BaseException:
            self.registry.listeners.close(listener)
            raise

    async def _resume(self, owner_id: uuid.UUID, conversation_id: uuid.UUID, message_id: uuid.UUID | None,
                      after_id: int, message_id_given: bool,
                      listener: Listener) -> tuple[uuid.UUID, Listener, EventStream]:
        if message_id_given:
            run = await self.registry.find(message_id, owner_id) if message_id is not None else None
        else:
            run = await self.registry.find_current(conversation_id, owner_id)
        if run is None or run.conversation_id != conversation_id:
            reply = await self._stored_reply_to_replay(owner_id, conversation_id, message_id, message_id_given)
            return reply.id, listener, _replay(reply, after_id)
        await run.catch_up(after_id, MIRROR_CATCH_UP_S)
        run.check_resumable(after_id)
        if after_id:
            sse_streams_resumed.labels(self.engine.model_name).inc()
        return run.message_id, listener, self.registry.listen(run, after_id, listener)

    async def _stored_reply_to_replay(self, owner_id: uuid.UUID, conversation_id: uuid.UUID,
                                      message_id: uuid.UUID | None, message_id_given: bool) -> Message:
        """The reply is not held here (finished long ago, or produced by another replica): what is stored."""
        await self.get(owner_id, conversation_id)
        if message_id_given:
            reply = await self._stored_reply(conversation_id, message_id) if message_id is not None else None
        else:
            async with self.database.session() as session:
                reply = await Messages(session).latest(conversation_id, MessageRole.ASSISTANT)
        if reply is None:
            raise NotFound("no such message in this conversation", param="message_id")
        if reply.status == MessageStatus.IN_PROGRESS:
            raise Conflict("this reply is being generated by another replica: set reply_streams_url, or route a "
                           "conversation's requests to one replica (see docs/conversations.md)", param="message_id")
        return reply

    async def cancel(self, owner_id: uuid.UUID, conversation_id: uuid.UUID, message_id: uuid.UUID) -> Message:
        """Stops the reply and answers with it as stored: cancelled, or as it ended if it ended first (a cancel
        that races the reply's own end). Never in_progress: 503 if its final write has not landed in time."""
        run = await self.registry.find(message_id, owner_id)
        if run is None or run.conversation_id != conversation_id:
            await self.get(owner_id, conversation_id)
            stored = await self._stored_reply(conversation_id, message_id)
            if stored is None:
                raise NotFound("this reply is not being generated here", param="message_id")
            raise Conflict("this reply is not being generated here", param="message_id")
        if run.done:
            raise Conflict("this reply has already ended", param="message_id")
        await self._cancel(run)
        if not run.remote:
            # The task may have been past its generation, waiting on its final write: the cancel ended only that
            # wait, not the write (see ReplyWriter.produce).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run.stored.wait(), REMOTE_STORE_WAIT_S)
        reply = await self._stored_reply(conversation_id, message_id)
        # A mirror ends with the final event; the replica generating the reply stores it just after.
        deadline = time.monotonic() + REMOTE_STORE_WAIT_S
        while run.remote and reply is not None and reply.status == MessageStatus.IN_PROGRESS \
                and time.monotonic() < deadline:
            await asyncio.sleep(REMOTE_STORE_POLL_S)
            reply = await self._stored_reply(conversation_id, message_id)
        if reply is None:
            raise NotFound("the conversation was deleted", param="conversation_id")
        if reply.status == MessageStatus.IN_PROGRESS:
            raise Unavailable("the reply has stopped but its final write has not landed yet; read the conversation "
                              "again shortly", retry_after_s=STORE_RETRY_AFTER_S)
        return reply

    async def _cancel(self, run: Run) -> None:
        if self.registry.cancel(run) and run.task is not None:
            await asyncio.gather(run.task, return_exceptions=True)

    async def _stored_reply(self, conversation_id: uuid.UUID, message_id: uuid.UUID) -> Message | None:
        async with self.database.session() as session:
            message = await Messages(session).get(conversation_id, message_id)
        return message if message is not None and message.role == MessageRole.ASSISTANT else None

    async def reconcile(self, conversation_id: uuid.UUID | None = None) -> int:
        """Mark replies left in_progress by a replica that died (no heartbeat for stale_after_s) interrupted,
        keeping their last flushed text. Every replica runs it at start and every stale_after_s. Not while the
        database has been reachable for less than stale_after_s: after an outage, live replicas' heartbeats (which
        failed during it) get the time to land first. Never this replica's own running or storing replies."""
        if not self.database_settled():
            return 0
        older_than = datetime.now(UTC) - timedelta(seconds=self.stale_after_s)
        own = ({run.message_id for run in self.registry.runs.values() if not run.done and not run.remote}
               | self.writer.final_writes.storing)
        async with self.database.session() as session:
            count = await Messages(session).interrupt_stale(older_than, conversation_id, own)
            await session.commit()
        if count:
            logger.warning("reconciled %d reply(ies) left in progress by a replica that stopped", count)
        return count

    # --- the seed's shapes --------------------------------------------------------------------------------------

    async def conversation_for_seed(self, owner_id: uuid.UUID, conversation_id: uuid.UUID | None,
                                    first_message: str) -> uuid.UUID:
        """The conversation a seed-style chat continues, or a new one titled after its first message."""
        if conversation_id is not None:
            return conversation_id
        conversation = await self.create(owner_id, first_message[:TITLE_FROM_MESSAGE_CHARS])
        return conversation.id

    async def follow_conversation(self, principal: Principal, conversation_id: uuid.UUID,
                                  after_id: int) -> Following:
        """The seed's stream, framed for EventSource.onmessage: the reply in progress; else the latest reply if it
        has finished (its events from this replica's buffer, or the stored reply); else the next reply to start."""
        listener = self.registry.listeners.open(principal.subject, user=principal.tenant, may_idle=True)
        try:
            return self._following(*await self._follow(principal.user_id, conversation_id, after_id, listener))
        except BaseException:
            self.registry.listeners.close(listener)
            raise

    async def _follow(self, owner_id: uuid.UUID, conversation_id: uuid.UUID, after_id: int,
                      listener: Listener) -> tuple[uuid.UUID | None, Listener, EventStream]:
        await self.get(owner_id, conversation_id)
        try:
            run = await self.registry.find_current(conversation_id, owner_id)
        except Unavailable:
            # The shared streams are not answering: EventSource gives up on a 503, and comes back after a reconnect.
            return None, listener, _reconnect()
        if run is not None:
            return run.message_id, listener, self.registry.listen(run, after_id, listener, Framing.PLAIN)
        async with self.database.session() as session:
            latest = await Messages(session).latest(conversation_id, MessageRole.ASSISTANT)
        if latest is not None and latest.status != MessageStatus.IN_PROGRESS:
            return latest.id, listener, _replay(latest, after_id, Framing.PLAIN)
        previous = latest.id if latest is not None else None
        return None, listener, self._next_reply(listener, owner_id, conversation_id, previous)

    async def _next_reply(self, listener: Listener, owner_id: uuid.UUID, conversation_id: uuid.UUID,
                          previous: uuid.UUID | None) -> EventStream:
        """Waits for the conversation's next reply (its start wakes this listener: no polling) with heartbeats;
        idle past the listener's idle time, a last event tells the client to reconnect."""
        while (upcoming := self.registry.upcoming(conversation_id, owner_id, previous)) is None:
            wake = await self.registry.wait_for_next(conversation_id, listener)
            if wake is Wake.IDLE:
                yield RECONNECT
                return
            if wake is Wake.HEARTBEAT:
                yield HEARTBEAT
                self.registry.listeners.wrote(listener, event=False)
        async for chunk in self.registry.listen(upcoming, 0, listener, Framing.PLAIN):
            yield chunk


async def _reconnect() -> EventStream:
    yield RECONNECT


async def _replay(reply: Message, after_id: int, framing: Framing = Framing.NAMED) -> EventStream:
    """A stored reply as one completed event carrying its whole text. Its id follows the client's Last-Event-ID:
    a client resuming after event N skips ids up to N, and this event replaces what it saw."""
    frames = frame_reply_event(ReplyEvent.COMPLETED, {
        "message_id": str(reply.id), "status": reply.status, "finish_reason": reply.finish_reason,
        "content": reply.content, "prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
        "replayed": True}, event_id=after_id + 1)
    yield frames[framing]
