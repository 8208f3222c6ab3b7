"""The Responses API's state over the database (ResponseState): stored responses for retrieval, input_items and
previous_response_id chains until their retention ends, and a conversation's items as context, appended to after
each response. An OpenAI conversation is a CodeFace conversation; its items are rows of `messages`."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from server.apis.openai.responses.ids import conversation_uuid, response_id
from server.apis.openai.responses.items import item_list, new_items, wire_item
from server.apis.openai.responses.state import Item
from server.conversations.items import NewItem
from server.conversations.store import READ_BYTES_PER_TOKEN, ConversationStore
from server.exceptions import Conflict, ConversationBusy, ConversationFull, InvalidRequest, NotFound
from storage import Database
from storage.models import Message, MessageRole, MessageStatus, StoredResponse, utcnow
from storage.repository import Messages
from storage.responses import RUNNING, Responses

logger = logging.getLogger(__name__)

# The most responses a previous_response_id chain may hold: each turn reads them all, so a longer chain is refused
# (a conversation reads only what a prompt can hold, however long it is).
MAX_CHAIN_LENGTH = 100
# The retention sweep deletes this many expired responses per statement, and at most this many statements a round.
SWEEP_BATCH = 500
SWEEP_MAX_BATCHES = 20
# Rows of a conversation that are not context: a reply still being generated, or one that failed.
NOT_CONTEXT = {MessageStatus.IN_PROGRESS, MessageStatus.FAILED}
IN_PROGRESS = "in_progress"
INCOMPLETE = "incomplete"
# incomplete_details.reason of a background response whose replica stopped (OpenAI's reasons are max_output_tokens
# and content_filter; this one is CodeFace's).
INTERRUPTED = "interrupted"


class ResponseStore:
    """Implements server.apis.openai.responses.state.ResponseState, and the routes over stored responses."""

    def __init__(self, database: Database, conversations: ConversationStore, *, retention: timedelta,
                 context_tokens: Callable[[], int]) -> None:
        """`context_tokens`: the model's context length (known once the engine has started)."""
        self.database = database
        self.conversations = conversations
        self.retention = retention
        self.context_tokens = context_tokens

    # --- ResponseState ----------------------------------------------------------------------------------------

    async def context(self, owner_id: uuid.UUID, *, previous_response_id: str | None,
                      conversation_id: str | None) -> list[Item]:
        if previous_response_id is not None and conversation_id is not None:
            raise InvalidRequest("previous_response_id and conversation cannot both be given: a conversation keeps "
                                 "its own history", param="previous_response_id")
        if previous_response_id is not None:
            return await self._chain(owner_id, previous_response_id)
        if conversation_id is not None:
            return await self._conversation_items(owner_id, conversation_uuid(conversation_id, "conversation"))
        return []

    async def save(self, owner_id: uuid.UUID, response: dict[str, Any], input_items: list[Item], *, store: bool,
                   conversation_id: str | None) -> None:
        inputs = prepare_inputs(input_items)
        conversation = conversation_uuid(conversation_id, "conversation") if conversation_id is not None else None
        async with self.database.session() as session:
            if store:
                await Responses(session).add(self._row(owner_id, response, inputs, conversation))
            if conversation is not None:
                await self._append_turn(session, owner_id, conversation, inputs, response)
            await _commit(session)

    # --- background responses: the row is written before, while and after the generation ----------------------

    async def begin(self, owner_id: uuid.UUID, response: dict[str, Any], inputs: PreparedInputs) -> None:
        """A background response's row, committed before it runs (queued): retrievable, and found by the reconciler
        if its replica dies."""
        conversation = response.get("conversation")
        conversation_id = conversation_uuid(conversation["id"], "conversation") if conversation else None
        async with self.database.session() as session:
            await Responses(session).add(self._row(owner_id, response, inputs, conversation_id))
            await session.commit()

    async def write(self, response: dict[str, Any]) -> None:
        """An interim write: the body so far and the heartbeat, only while the row is still running."""
        async with self.database.session() as session:
            await Responses(session).write(response["id"], status=response["status"], body=response,
                                           only_if_running=True)
            await session.commit()

    async def finish(self, owner_id: uuid.UUID, response: dict[str, Any], inputs: PreparedInputs,
                     last_sequence: int) -> None:
        """The ended response, and its turn appended to its conversation (as save does), in one transaction; a
        conversation that refuses the turn (deleted, full, another item at the same time) is logged and the
        response is stored alone: the response must not be lost to it."""
        conversation = response.get("conversation")
        conversation_id = conversation_uuid(conversation["id"], "conversation") if conversation else None
        if conversation_id is not None:
            try:
                async with self.database.session() as session:
                    await Responses(session).write(response["id"], status=response["status"], body=response,
                                                   last_sequence=last_sequence)
                    await self._append_turn(session, owner_id, conversation_id, inputs, response)
                    await _commit(session)
                return
            except (NotFound, ConversationFull, ConversationBusy) as error:
                logger.warning("background response %s: its turn was not appended to its conversation: %s",
                               response["id"], error.message)
        async with self.database.session() as session:
            await Responses(session).write(response["id"], status=response["status"], body=response,
                                           last_sequence=last_sequence)
            await session.commit()

    async def stored(self, owner_id: uuid.UUID, wire_id: str) -> StoredResponse:
        return await self._stored(owner_id, wire_id)

    async def reconcile(self, older_than: datetime, exclude: set[str]) -> int:
        """Background responses left queued or in_progress by a replica that died (no heartbeat since
        `older_than`): incomplete, reason interrupted, keeping the output last written; not appended to their
        conversation (their turn never ended). A bounded number a round (the next round takes the rest)."""
        count = 0
        async with self.database.session() as session:
            responses = Responses(session)
            for row in await responses.stale(older_than, exclude, SWEEP_BATCH):
                if await responses.settle_stale(row.id, older_than, status=INCOMPLETE, body=interrupted(row.body)):
                    count += 1
            await session.commit()
        if count:
            logger.warning("reconciled %d background response(s) left running by a replica that stopped", count)
        return count

    def _row(self, owner_id: uuid.UUID, response: dict[str, Any], inputs: PreparedInputs,
             conversation_id: uuid.UUID | None) -> StoredResponse:
        now = utcnow()
        return StoredResponse(id=response["id"], owner_id=owner_id, conversation_id=conversation_id,
                              previous_response_id=response.get("previous_response_id"), status=response["status"],
                              created_at=now, updated_at=now, expires_at=now + self.retention, body=response,
                              input_items=inputs.stored)

    async def _append_turn(self, session: AsyncSession, owner_id: uuid.UUID, conversation_id: uuid.UUID,
                           inputs: PreparedInputs, response: dict[str, Any]) -> None:
        outputs = new_items(response.get("output") or [], "output", ours=True)
        await self._append(session, owner_id, conversation_id, [new for _, new in [*inputs.pairs, *outputs]])

    # --- stored responses -------------------------------------------------------------------------------------

    async def get(self, owner_id: uuid.UUID, wire_id: str) -> dict[str, Any]:
        return (await self._stored(owner_id, wire_id)).body

    async def delete(self, owner_id: uuid.UUID, wire_id: str) -> None:
        """Gone at once, with its input items. Responses chained after it keep their own items, but a new
        response chained through it is refused (404 naming it): its turns are no longer there to read."""
        async with self.database.session() as session:
            deleted = await Responses(session).delete(owner_id, response_id(wire_id))
            await session.commit()
        if not deleted:
            raise NotFound(f"response {wire_id!r} not found", param="response_id")

    async def input_items(self, owner_id: uuid.UUID, wire_id: str, *, after: str | None, limit: int,
                          descending: bool) -> dict[str, Any]:
        items = list((await self._stored(owner_id, wire_id)).input_items)
        if descending:
            items.reverse()
        start = 0
        if after is not None:
            start = next((i + 1 for i, item in enumerate(items) if item.get("id") == after), -1)
            if start < 0:
                raise InvalidRequest(f"after: no input item {after!r} in this response", param="after")
        page = items[start:start + limit]
        return item_list(page, start + limit < len(items))

    async def sweep(self, now: datetime | None = None) -> int:
        """Delete responses past their retention, a batch per statement and a bounded number a round (the next
        round takes the rest): what is stored never outlives the retention by more than the sweep's period."""
        now = now or datetime.now(UTC)
        total = 0
        for _ in range(SWEEP_MAX_BATCHES):
            async with self.database.session() as session:
                deleted = await Responses(session).delete_expired(now, SWEEP_BATCH)
                await session.commit()
            total += deleted
            if deleted < SWEEP_BATCH:
                break
        if total:
            logger.info("deleted %d stored response(s) past their retention", total)
        return total

    # --- helpers ----------------------------------------------------------------------------------------------

    async def _stored(self, owner_id: uuid.UUID, wire_id: str) -> StoredResponse:
        async with self.database.session() as session:
            stored = await Responses(session).get(owner_id, response_id(wire_id))
        if stored is None:
            raise NotFound(f"response {wire_id!r} not found", param="response_id")
        return stored

    async def _chain(self, owner_id: uuid.UUID, wire_id: str) -> list[Item]:
        param = "previous_response_id"
        async with self.database.session() as session:
            links = await Responses(session).chain(owner_id, response_id(wire_id, param), MAX_CHAIN_LENGTH + 1)
        if not links:
            raise NotFound(f"response {wire_id!r} not found", param=param)
        if len(links) > MAX_CHAIN_LENGTH:
            raise InvalidRequest(f"the chain of previous_response_id is longer than {MAX_CHAIN_LENGTH} responses: "
                                 "start from a shorter chain, or keep the history in a conversation", param=param)
        if (missing := links[-1].previous_response_id) is not None:
            raise NotFound(f"response {missing!r}, earlier in the chain of previous_response_id, was deleted or "
                           "has expired", param=param)
        if running := next((link.id for link in links if link.body.get("status") in RUNNING), None):
            raise Conflict(f"response {running!r} is still being generated: wait for it to end, or cancel it",
                           param=param)
        items: list[Item] = []
        for link in reversed(links):
            items.extend(link.input_items)
            items.extend(link.body.get("output") or [])
        return items

    async def _conversation_items(self, owner_id: uuid.UUID, conversation_id: uuid.UUID) -> list[Item]:
        """What a prompt could hold of the conversation, newest first, from a user message when older ones are left
        unread (a prompt never starts with a function call's output); never a reply in progress."""
        try:
            await self.conversations.get(owner_id, conversation_id)
            await self.conversations.check_room(conversation_id, "")
        except (NotFound, ConversationFull) as error:
            raise type(error)(error.message, param="conversation") from None
        tokens = self.context_tokens()
        async with self.database.session() as session:
            messages = Messages(session)
            rows = await messages.recent(conversation_id, max_bytes=tokens * READ_BYTES_PER_TOKEN,
                                         max_messages=tokens)
            first = await messages.history(conversation_id, limit=1)
        if rows and rows[-1].status == MessageStatus.IN_PROGRESS:
            raise ConversationBusy("a reply is still being generated in this conversation; wait for it or cancel "
                                   "it", param="conversation")
        if rows and first and rows[0].seq != first[0].seq:
            start = next((i for i, row in enumerate(rows) if row.role == MessageRole.USER), len(rows))
            rows = rows[start:]
        return [wire_item(row) for row in rows if row.status not in NOT_CONTEXT]

    async def _append(self, session: AsyncSession, owner_id: uuid.UUID, conversation_id: uuid.UUID,
                      items: list[NewItem]) -> None:
        try:
            await self.conversations.append(session, owner_id, conversation_id, items)
        except (NotFound, ConversationFull) as error:
            raise type(error)(error.message, param="conversation") from None


@dataclass(frozen=True, slots=True)
class PreparedInputs:
    """A response's input items with their ids (given, or new): as conversation rows, and as stored."""

    pairs: list[tuple[Item, NewItem]]
    stored: list[Item]


def prepare_inputs(input_items: list[Item]) -> PreparedInputs:
    pairs = new_items(input_items, "input", ours=False)
    return PreparedInputs(pairs, [{**wire_item(_transient(new)), "id": item["id"]} for item, new in pairs])


def interrupted(body: dict[str, Any]) -> dict[str, Any]:
    """A body left running by a replica that died, as it ends: incomplete (reason interrupted), its items too."""
    output = [{**item, "status": INCOMPLETE} if item.get("status") == IN_PROGRESS else item
              for item in body.get("output") or []]
    return {**body, "status": INCOMPLETE, "output": output, "incomplete_details": {"reason": INTERRUPTED}}


def _transient(new: NewItem) -> Message:
    """An item as a row that is never stored: how it reads back on the wire."""
    return Message(id=new.item_id, role=new.role, content=new.content, status=new.status,
                   item=new.record.to_json() if new.record is not None else None)


async def _commit(session: AsyncSession) -> None:
    try:
        await session.commit()
    except IntegrityError:
        raise ConversationBusy("another item was added to this conversation at the same time",
                               param="conversation") from None
