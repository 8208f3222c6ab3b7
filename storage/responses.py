"""Stored Responses API responses: read and deleted by owner, walked back along previous_response_id, swept once
expired; a background response's row is written while it runs (its body so far and a heartbeat) and found stale
once its replica has died."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, literal, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import StoredResponse, utcnow
from storage.repository import rows_changed


@dataclass(frozen=True, slots=True)
class Link:
    """One response of a previous_response_id chain: what the next response reads of it."""

    id: str
    previous_response_id: str | None
    input_items: list[dict[str, Any]]
    body: dict[str, Any]


# A background response's statuses while it runs (OpenAI's): a row in one of them has a replica generating it.
RUNNING = ("queued", "in_progress")


class Responses:
    """Every read takes the owner and skips what has expired: another user's or an expired response does not
    exist, whether the sweep has deleted it yet or not."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, response: StoredResponse) -> None:
        self.session.add(response)
        await self.session.flush()

    async def get(self, owner_id: uuid.UUID, response_id: str) -> StoredResponse | None:
        return await self.session.scalar(select(StoredResponse).where(
            StoredResponse.id == response_id, StoredResponse.owner_id == owner_id,
            StoredResponse.expires_at > utcnow()))

    async def chain(self, owner_id: uuid.UUID, response_id: str, max_length: int) -> list[Link]:
        """The response and those before it along previous_response_id, newest first,
        at most max_length of them, in one query. Stops at the first link that is missing, expired or another
        owner's (the caller compares the last row's previous_response_id with what it holds)."""
        live = (StoredResponse.owner_id == owner_id) & (StoredResponse.expires_at > utcnow())
        start = (select(StoredResponse.id, StoredResponse.previous_response_id, literal(1).label("depth"))
                 .where(StoredResponse.id == response_id, live).cte("chain", recursive=True))
        step = (select(StoredResponse.id, StoredResponse.previous_response_id, (start.c.depth + 1).label("depth"))
                .join(start, StoredResponse.id == start.c.previous_response_id)
                .where(live, start.c.depth < max_length))
        links = start.union_all(step)
        rows = (await self.session.execute(
            select(StoredResponse.id, StoredResponse.previous_response_id, StoredResponse.input_items,
                   StoredResponse.body)
            .join(links, StoredResponse.id == links.c.id).order_by(links.c.depth))).all()
        return [Link(row.id, row.previous_response_id, row.input_items, row.body) for row in rows]

    async def delete(self, owner_id: uuid.UUID, response_id: str) -> bool:
        result = await self.session.execute(delete(StoredResponse).where(
            StoredResponse.id == response_id, StoredResponse.owner_id == owner_id,
            StoredResponse.expires_at > utcnow()))
        return rows_changed(result) > 0

    async def delete_expired(self, now: datetime, batch: int) -> int:
        """At most `batch` responses past their expiry: one short statement, so the sweep never holds a long lock."""
        expired = select(StoredResponse.id).where(StoredResponse.expires_at <= now).limit(batch).scalar_subquery()
        result = await self.session.execute(delete(StoredResponse).where(StoredResponse.id.in_(expired)))
        return rows_changed(result)

    async def write(self, response_id: str, *, status: str, body: dict[str, Any],
                    last_sequence: int | None = None, only_if_running: bool = False) -> bool:
        """A background response's body and status (its heartbeat with them). `only_if_running`: only while the row
        is still queued or in_progress (an interim write never overwrites an end, nor a reconciled row)."""
        query = update(StoredResponse).where(StoredResponse.id == response_id)
        if only_if_running:
            query = query.where(StoredResponse.status.in_(RUNNING))
        values: dict[str, Any] = {"status": status, "body": body, "updated_at": utcnow()}
        if last_sequence is not None:
            values["last_sequence"] = last_sequence
        return rows_changed(await self.session.execute(query.values(**values))) > 0

    async def stale(self, older_than: datetime, exclude: set[str], limit: int) -> list[StoredResponse]:
        """Responses left queued or in_progress whose heartbeat is older than `older_than` (their replica died),
        but those in `exclude` (the caller's own)."""
        query = select(StoredResponse).where(StoredResponse.status.in_(RUNNING), StoredResponse.updated_at < older_than)
        if exclude:
            query = query.where(StoredResponse.id.notin_(exclude))
        return list(await self.session.scalars(query.limit(limit)))

    async def settle_stale(self, response_id: str, older_than: datetime, *, status: str, body: dict[str, Any]) -> bool:
        """Marks one stale response ended, unless its heartbeat came back meanwhile (a replica that was only slow)."""
        result = await self.session.execute(update(StoredResponse).where(
            StoredResponse.id == response_id, StoredResponse.status.in_(RUNNING),
            StoredResponse.updated_at < older_than).values(status=status, body=body, updated_at=utcnow())
            # The rows were read in this session: the database compares the heartbeats, not Python.
            .execution_options(synchronize_session=False))
        return rows_changed(result) > 0
