"""Repositories: the queries the server needs, so that route code holds no SQL. Conversations and keys are read
by owner; messages by conversation, which the service has loaded by owner first."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, Integer, Result, delete, func, select, update
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from storage.models import ApiKey, Conversation, Message, MessageRole, MessageStatus, User, utcnow

# Postgres text cannot hold NUL (SQLSTATE 22021): text that may carry one (a model's output) has it replaced by
# U+FFFD, the character Unicode sets for "not representable here", before it is streamed or stored.
NUL = "\x00"
REPLACEMENT_CHARACTER = "\ufffd"
# SQLSTATE classes of a statement the database answered and refused (data exception, integrity constraint, syntax or
# access rule): the same statement would be refused again, unlike one lost to an outage.
REFUSED_SQLSTATE_CLASSES = frozenset({"22", "23", "42"})


# Sizes of the newest messages are read this many at a time (see Messages.recent).
RECENT_PAGE = 200


def storable_text(text: str) -> str:
    return text.replace(NUL, REPLACEMENT_CHARACTER) if NUL in text else text


def refused(error: BaseException) -> bool:
    """Whether the database refused the statement itself (bad data), as opposed to not answering (an outage)."""
    if isinstance(error, DataError | IntegrityError | ProgrammingError):
        return True
    if isinstance(error, DBAPIError):
        sqlstate = getattr(error.orig, "sqlstate", None) or getattr(error.orig, "pgcode", None)
        return isinstance(sqlstate, str) and sqlstate[:2] in REFUSED_SQLSTATE_CLASSES
    return False


def rows_changed(result: Result[Any]) -> int:
    """An UPDATE's or DELETE's row count (execute() is typed as returning a plain Result)."""
    return int(cast(CursorResult[Any], result).rowcount)


class ContentBytes(FunctionElement[int]):
    """A text column's length in bytes, without reading it into Python (Postgres reads the stored size)."""

    type = Integer()
    inherit_cache = True


@compiles(ContentBytes)
def _octet_length(element: ContentBytes, compiler: SQLCompiler, **kw: Any) -> str:
    return f"octet_length({compiler.process(element.clauses, **kw)})"


@compiles(ContentBytes, "sqlite")
def _sqlite_bytes(element: ContentBytes, compiler: SQLCompiler, **kw: Any) -> str:
    # SQLite has octet_length only from 3.43.
    return f"length(CAST({compiler.process(element.clauses, **kw)} AS BLOB))"


class Users:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, user_id: uuid.UUID) -> User | None:
        return await self.session.get(User, user_id)

    async def by_username(self, username: str) -> User | None:
        return await self.session.scalar(select(User).where(User.username == username))

    async def create(self, username: str, *, password_hash: str | None = None, is_admin: bool = False,
                     allowed_models: list[str] | None = None) -> User:
        user = User(username=username, password_hash=password_hash, is_admin=is_admin, allowed_models=allowed_models)
        self.session.add(user)
        await self.session.flush()
        return user

    async def get_or_create(self, username: str) -> User:
        return await self.by_username(username) or await self.create(username)


class ApiKeys:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def create(self, owner_id: uuid.UUID, *, key_hash: str, prefix: str, name: str = "",
                     expires_at: datetime | None = None, requests_per_minute: int | None = None,
                     tokens_per_minute: int | None = None, max_concurrent_streams: int | None = None,
                     weight: int | None = None, allowed_models: list[str] | None = None) -> ApiKey:
        key = ApiKey(owner_id=owner_id, key_hash=key_hash, prefix=prefix, name=name, expires_at=expires_at,
                     requests_per_minute=requests_per_minute, tokens_per_minute=tokens_per_minute,
                     max_concurrent_streams=max_concurrent_streams, weight=weight, allowed_models=allowed_models)
        self.session.add(key)
        await self.session.flush()
        return key

    async def count_active(self, owner_id: uuid.UUID) -> int:
        """Keys neither revoked nor expired."""
        now = utcnow()
        count = await self.session.scalar(select(func.count()).select_from(ApiKey).where(
            ApiKey.owner_id == owner_id, ApiKey.revoked_at.is_(None),
            (ApiKey.expires_at.is_(None)) | (ApiKey.expires_at > now)))
        return int(count or 0)

    async def by_hash(self, key_hash: str) -> ApiKey | None:
        return await self.session.scalar(select(ApiKey).where(ApiKey.key_hash == key_hash))

    async def list_for(self, owner_id: uuid.UUID) -> list[ApiKey]:
        rows = await self.session.scalars(
            select(ApiKey).where(ApiKey.owner_id == owner_id).order_by(ApiKey.created_at.desc())
        )
        return list(rows)

    async def get(self, owner_id: uuid.UUID, key_id: uuid.UUID) -> ApiKey | None:
        return await self.session.scalar(select(ApiKey).where(ApiKey.id == key_id, ApiKey.owner_id == owner_id))

    async def revoke(self, owner_id: uuid.UUID, key_id: uuid.UUID) -> bool:
        result = await self.session.execute(
            update(ApiKey)
            .where(ApiKey.id == key_id, ApiKey.owner_id == owner_id, ApiKey.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        )
        return rows_changed(result) > 0


class Conversations:
    """Every read and write takes the owner: another user's conversation simply does not exist."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def create(self, owner_id: uuid.UUID, title: str = "", meta: dict[str, str] | None = None,
                     model: str | None = None) -> Conversation:
        conversation = Conversation(owner_id=owner_id, title=title, meta=meta, model=model)
        self.session.add(conversation)
        await self.session.flush()
        return conversation

    async def get(self, owner_id: uuid.UUID, conversation_id: uuid.UUID) -> Conversation | None:
        return await self.session.scalar(
            select(Conversation).where(Conversation.id == conversation_id, Conversation.owner_id == owner_id)
        )

    async def list_for(self, owner_id: uuid.UUID, *, limit: int = 20,
                       before: tuple[datetime, uuid.UUID] | None = None) -> list[Conversation]:
        """Newest first. `before` is the (created_at, id) of the last row of the previous page."""
        query = select(Conversation).where(Conversation.owner_id == owner_id)
        if before is not None:
            created_at, last_id = before
            query = query.where(
                (Conversation.created_at < created_at)
                | ((Conversation.created_at == created_at) & (Conversation.id < last_id))
            )
        query = query.order_by(Conversation.created_at.desc(), Conversation.id.desc()).limit(limit)
        return list(await self.session.scalars(query))

    async def rename(self, owner_id: uuid.UUID, conversation_id: uuid.UUID, title: str) -> Conversation | None:
        return await self.update(owner_id, conversation_id, title=title)

    async def update(self, owner_id: uuid.UUID, conversation_id: uuid.UUID, **values: Any) -> Conversation | None:
        """Sets the given columns (title, model) of the owner's conversation."""
        conversation = await self.get(owner_id, conversation_id)
        if conversation is not None:
            for name, value in values.items():
                setattr(conversation, name, value)
            await self.session.flush()
        return conversation

    async def set_meta(self, owner_id: uuid.UUID, conversation_id: uuid.UUID, meta: dict[str, str] | None
                       ) -> Conversation | None:
        conversation = await self.get(owner_id, conversation_id)
        if conversation is not None:
            conversation.meta = meta
            await self.session.flush()
        return conversation

    async def delete(self, owner_id: uuid.UUID, conversation_id: uuid.UUID) -> bool:
        result = await self.session.execute(
            delete(Conversation).where(Conversation.id == conversation_id, Conversation.owner_id == owner_id)
        )
        return rows_changed(result) > 0


class Messages:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def append(self, conversation_id: uuid.UUID, role: MessageRole, content: str, *,
                     status: MessageStatus = MessageStatus.COMPLETED, prompt_tokens: int | None = None,
                     message_id: uuid.UUID | None = None, item: dict[str, Any] | None = None) -> Message:
        """Add a message at the end. The unique (conversation, seq) index rejects a concurrent append. `item`: what
        a plain text message cannot say (server/conversations/items.py)."""
        last = await self.session.scalar(
            select(func.max(Message.seq)).where(Message.conversation_id == conversation_id)
        )
        message = Message(id=message_id or uuid.uuid4(), conversation_id=conversation_id, seq=(last or 0) + 1,
                          role=role, content=content, status=status, prompt_tokens=prompt_tokens, item=item)
        self.session.add(message)
        await self.session.flush()
        return message

    async def get(self, conversation_id: uuid.UUID, message_id: uuid.UUID) -> Message | None:
        return await self.session.scalar(
            select(Message).where(Message.id == message_id, Message.conversation_id == conversation_id)
        )

    async def page(self, conversation_id: uuid.UUID, *, limit: int, descending: bool,
                   after_seq: int | None = None) -> list[Message]:
        """`limit` messages in seq order (or reversed), after the message at `after_seq` in that order."""
        query = select(Message).where(Message.conversation_id == conversation_id)
        if after_seq is not None:
            query = query.where(Message.seq < after_seq if descending else Message.seq > after_seq)
        order = Message.seq.desc() if descending else Message.seq
        return list(await self.session.scalars(query.order_by(order).limit(limit)))

    async def delete(self, conversation_id: uuid.UUID, message_id: uuid.UUID) -> bool:
        result = await self.session.execute(
            delete(Message).where(Message.id == message_id, Message.conversation_id == conversation_id))
        return rows_changed(result) > 0

    async def finish(self, message_id: uuid.UUID, *, content: str | None, status: MessageStatus,
                     finish_reason: str | None, completion_tokens: int | None) -> None:
        """`content` None: the stored text is kept."""
        values: dict[str, Any] = {"status": status, "finish_reason": finish_reason,
                                  "completion_tokens": completion_tokens, "updated_at": utcnow()}
        if content is not None:
            values["content"] = content
        await self.session.execute(update(Message).where(Message.id == message_id).values(**values))

    async def latest(self, conversation_id: uuid.UUID, role: MessageRole) -> Message | None:
        return await self.session.scalar(
            select(Message).where(Message.conversation_id == conversation_id, Message.role == role)
            .order_by(Message.seq.desc()).limit(1))

    async def interrupt_stale(self, older_than: datetime, conversation_id: uuid.UUID | None = None,
                              exclude: set[uuid.UUID] | None = None) -> int:
        """Replies left in_progress whose heartbeat stopped (their replica died): interrupted, text kept. `exclude`:
        the replies the caller itself is still running or storing."""
        query = update(Message).where(Message.status == MessageStatus.IN_PROGRESS, Message.updated_at < older_than)
        if conversation_id is not None:
            query = query.where(Message.conversation_id == conversation_id)
        if exclude:
            query = query.where(Message.id.notin_(exclude))
        result = await self.session.execute(query.values(status=MessageStatus.INTERRUPTED,
                                                         finish_reason=MessageStatus.INTERRUPTED, updated_at=utcnow()))
        return rows_changed(result)

    async def history(self, conversation_id: uuid.UUID, *, after_seq: int = 0, limit: int | None = None
                      ) -> list[Message]:
        query = (select(Message).where(Message.conversation_id == conversation_id, Message.seq > after_seq)
                 .order_by(Message.seq))
        if limit is not None:
            query = query.limit(limit)
        return list(await self.session.scalars(query))

    async def size(self, conversation_id: uuid.UUID) -> tuple[int, int]:
        """How many messages the conversation holds, and their text's bytes."""
        row = (await self.session.execute(
            select(func.count(), func.coalesce(func.sum(ContentBytes(Message.content)), 0))
            .where(Message.conversation_id == conversation_id))).one()
        return int(row[0]), int(row[1])

    async def recent(self, conversation_id: uuid.UUID, *, max_bytes: int, max_messages: int,
                     page: int = RECENT_PAGE) -> list[Message]:
        """The newest messages, oldest first, back to the first that takes their text past `max_bytes` or their
        number to `max_messages` (or all there are). Sizes are read newest-first in pages, then only those
        messages: a post reads what its prompt could hold, however long the conversation."""
        start: int | None = None
        total_bytes = count = 0
        before: int | None = None
        while True:
            query = (select(Message.seq, ContentBytes(Message.content))
                     .where(Message.conversation_id == conversation_id).order_by(Message.seq.desc()).limit(page))
            if before is not None:
                query = query.where(Message.seq < before)
            rows = (await self.session.execute(query)).all()
            for seq, size in rows:
                start, total_bytes, count = seq, total_bytes + int(size or 0), count + 1
                if total_bytes >= max_bytes or count >= max_messages:
                    break
            else:
                if len(rows) == page:
                    before = rows[-1][0]
                    continue
            break
        if start is None:
            return []
        return list(await self.session.scalars(
            select(Message).where(Message.conversation_id == conversation_id, Message.seq >= start)
            .order_by(Message.seq)))
