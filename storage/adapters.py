"""The LoRA adapters admins loaded at run time: the queries, so that the adapter service holds no SQL."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import LoraAdapter
from storage.repository import rows_changed


class LoraAdapters:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def all(self) -> Sequence[LoraAdapter]:
        return (await self.session.scalars(select(LoraAdapter).order_by(LoraAdapter.created_at))).all()

    async def add(self, name: str, path: str, created_by: uuid.UUID | None) -> LoraAdapter:
        """Raises IntegrityError (at flush) when the name is taken."""
        record = LoraAdapter(name=name, path=path, created_by=created_by)
        self.session.add(record)
        await self.session.flush()
        return record

    async def remove(self, name: str) -> bool:
        return rows_changed(await self.session.execute(delete(LoraAdapter).where(LoraAdapter.name == name))) > 0
