"""Reply streams shared through Redis (`reply_streams_url`), so that any replica serves resume, cancel and the
seed's stream route of a reply that another replica generates. The replica generating a reply appends its events
to a Redis stream (capped) and keeps an `alive` key and the reply's keys fresh while it runs (they expire the resume
window after it ends); a replica that does not hold the reply mirrors that stream with blocking reads; cancels and
reply starts travel on pub/sub channels; a replica with listeners on a mirror keeps a `listening` key fresh, which
stops the owner's grace clock. Every call is bounded in time: a hung Redis fails it (RedisError) like a dead one."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

PREFIX = "codeface:reply"
CANCEL_CHANNEL = "codeface:reply-cancel"
STARTED_CHANNEL = "codeface:reply-started"
# A blocking read returns at least this often, so that a mirror notices a replica that died.
READ_BLOCK_MS = 2000
READ_COUNT = 512
# The owner refreshes its `alive` key this often; a mirror gives up after ALIVE_TTL_S without it.
ALIVE_EVERY_S = 2.0
ALIVE_TTL_S = 10
RESUBSCRIBE_AFTER_S = 1.0
# A short call that times out or loses its connection is sent once more, at once, before it fails: one late answer
# (a stalled process or Redis, for longer than the timeout) is not an outage, and a client should not get a 503 for
# it. Safe for every call here: reads, key refreshes and SET/EXPIRE are idempotent, and a mirror skips a stream
# entry appended twice. A hung Redis fails a call after (1 + SHORT_CALL_RETRIES) x timeout.
SHORT_CALL_RETRIES = 1
MAX_STREAM_EVENTS = 100_000
# A running reply's keys outlive the owner's refresh period by this much; once it ends, they expire after the
# resume window (retention) exactly.
RUNNING_TTL_MARGIN_S = ALIVE_TTL_S
# Ends the expiry of a conversation's `latest` key only if it still names this reply (a newer one may have started).
_EXPIRE_IF_LATEST = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


def _key(message_id: uuid.UUID, part: str) -> str:
    return f"{PREFIX}:{message_id}:{part}"


def _latest_key(conversation_id: uuid.UUID) -> str:
    return f"codeface:conversation:{conversation_id}:reply"


@dataclass(frozen=True, slots=True)
class RemoteReply:
    message_id: uuid.UUID
    conversation_id: uuid.UUID
    owner_id: uuid.UUID


@dataclass(frozen=True, slots=True)
class StreamEntry:
    """One event as a mirror reads it: its SSE id, both framings, whether it ends the reply."""

    event_id: int
    named: bytes
    plain: bytes
    final: bool


class ReplyBus:
    """The Redis side of shared reply streams. Connects lazily; every call raises RedisError when Redis fails or
    does not answer within `timeout_s` twice (a blocking read: once, within its block time plus `timeout_s`)."""

    def __init__(self, url: str, retention_s: float, timeout_s: float) -> None:
        self.redis = aioredis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                             retry=Retry(NoBackoff(), SHORT_CALL_RETRIES))
        # Blocking reads wait on the server up to READ_BLOCK_MS: their own pool, whose timeout allows for it.
        self.reader = aioredis.Redis.from_url(url, socket_timeout=READ_BLOCK_MS / 1000 + timeout_s,
                                              socket_connect_timeout=timeout_s)
        self.retention_s = int(max(retention_s, 1))
        self.running_ttl_s = self.retention_s + RUNNING_TTL_MARGIN_S
        self._expire_if_latest = self.redis.register_script(_EXPIRE_IF_LATEST)
        self.on_cancel: Callable[[uuid.UUID], None] = lambda _message_id: None
        self.on_started: Callable[[RemoteReply], None] = lambda _reply: None
        self._subscriber: asyncio.Task[None] | None = None

    def ensure_subscribed(self) -> None:
        if self._subscriber is None or self._subscriber.done():
            self._subscriber = asyncio.get_running_loop().create_task(self._subscribe(), name="reply-bus")

    async def _subscribe(self) -> None:
        while True:
            try:
                pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
                await pubsub.subscribe(CANCEL_CHANNEL, STARTED_CHANNEL)
                async for message in pubsub.listen():
                    self._dispatch(message)
            except RedisError as exc:
                logger.warning("reply streams: subscription lost (%s); retrying", exc)
                await asyncio.sleep(RESUBSCRIBE_AFTER_S)

    def _dispatch(self, message: dict[str, Any]) -> None:
        channel, data = message["channel"].decode(), message["data"].decode()
        try:
            if channel == CANCEL_CHANNEL:
                self.on_cancel(uuid.UUID(data))
            elif channel == STARTED_CHANNEL:
                message_id, conversation_id, owner_id = (uuid.UUID(part) for part in data.split())
                self.on_started(RemoteReply(message_id, conversation_id, owner_id))
        except ValueError:
            logger.warning("reply streams: ignored a malformed message on %s", channel)

    async def announce(self, reply: RemoteReply) -> None:
        """A reply starts on this replica: where to find it, then a word to replicas waiting for it."""
        async with self.redis.pipeline(transaction=False) as pipe:
            self._refresh(pipe, reply)
            pipe.publish(STARTED_CHANNEL, f"{reply.message_id} {reply.conversation_id} {reply.owner_id}")
            await pipe.execute()

    def _refresh(self, pipe: Any, reply: RemoteReply) -> None:
        """While the reply runs: its keys, (re)written with a lifetime past the next refresh (a Redis restarted
        meanwhile gets them back)."""
        pipe.hset(_key(reply.message_id, "meta"), mapping={
            "conversation": str(reply.conversation_id), "owner": str(reply.owner_id)})
        pipe.expire(_key(reply.message_id, "meta"), self.running_ttl_s)
        pipe.set(_key(reply.message_id, "alive"), 1, ex=ALIVE_TTL_S)
        pipe.set(_latest_key(reply.conversation_id), str(reply.message_id), ex=self.running_ttl_s)
        pipe.expire(_key(reply.message_id, "events"), self.running_ttl_s)

    async def append(self, reply: RemoteReply, entries: list[StreamEntry]) -> None:
        """Events in order; the final one starts the resume window of the reply's keys (they expire after it)."""
        key = _key(reply.message_id, "events")
        final = bool(entries) and entries[-1].final
        async with self.redis.pipeline(transaction=False) as pipe:
            for entry in entries:
                pipe.xadd(key, {"id": entry.event_id, "named": entry.named, "plain": entry.plain,
                                "final": int(entry.final)}, maxlen=MAX_STREAM_EVENTS, approximate=True)
            pipe.expire(key, self.retention_s if final else self.running_ttl_s)
            if final:
                pipe.delete(_key(reply.message_id, "alive"))
                pipe.expire(_key(reply.message_id, "meta"), self.retention_s)
                await self._expire_if_latest(keys=[_latest_key(reply.conversation_id)],
                                             args=[str(reply.message_id), self.retention_s], client=pipe)
            await pipe.execute()

    async def keep_alive(self, reply: RemoteReply) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            self._refresh(pipe, reply)
            await pipe.execute()

    async def alive(self, message_id: uuid.UUID) -> bool:
        return bool(await self.redis.exists(_key(message_id, "alive")))

    async def lookup(self, message_id: uuid.UUID) -> RemoteReply | None:
        # The client returns bytes (decode_responses off); redis-py types them as bytes | str.
        meta = cast("dict[bytes, bytes]", await self.redis.hgetall(_key(message_id, "meta")))
        if not meta:
            return None
        return RemoteReply(message_id, uuid.UUID(meta[b"conversation"].decode()), uuid.UUID(meta[b"owner"].decode()))

    async def latest(self, conversation_id: uuid.UUID) -> RemoteReply | None:
        message_id = cast("bytes | None", await self.redis.get(_latest_key(conversation_id)))
        return await self.lookup(uuid.UUID(message_id.decode())) if message_id else None

    async def read(self, message_id: uuid.UUID, after: str, *, block: bool = True) -> tuple[str, list[StreamEntry]]:
        """Entries after the stream position `after` ("0-0": from the start), blocking up to READ_BLOCK_MS (or
        not at all); returns the new position and the entries."""
        answer: Any = await self.reader.xread({_key(message_id, "events"): after}, count=READ_COUNT,
                                              block=READ_BLOCK_MS if block else None)
        entries: list[StreamEntry] = []
        for _key_name, items in answer or []:
            for position, fields in items:
                after = position.decode()
                entries.append(StreamEntry(int(fields[b"id"]), fields[b"named"], fields[b"plain"],
                                           fields[b"final"] == b"1"))
        return after, entries

    async def request_cancel(self, message_id: uuid.UUID) -> None:
        await self.redis.publish(CANCEL_CHANNEL, str(message_id))

    async def mark_listening(self, message_id: uuid.UUID, ttl_s: float) -> None:
        await self.redis.set(_key(message_id, "listening"), 1, ex=max(1, int(ttl_s)))

    async def listening(self, message_id: uuid.UUID) -> bool:
        return bool(await self.redis.exists(_key(message_id, "listening")))

    async def close(self) -> None:
        if self._subscriber is not None:
            self._subscriber.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._subscriber
        await self.redis.aclose()
        await self.reader.aclose()
