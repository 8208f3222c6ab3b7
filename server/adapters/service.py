"""LoRA adapters as state: those the profile declares and those an admin loads at run time (recorded in the database,
so that every API process and replica serves the same set once it starts). A load the engine refuses changes
nothing."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from sqlalchemy.exc import IntegrityError

from engine import Adapter, AdapterLoadError
from server.adapters.catalog import MAX_ADAPTER_NAME_CHARS, ModelCatalog
from server.exceptions import Conflict, Forbidden, InvalidRequest, NotFound
from server.security.auth import Principal
from storage import Database
from storage.adapters import LoraAdapters

logger = logging.getLogger(__name__)

ADMINS_ONLY = "only an admin may load, unload or list LoRA adapters"


class AdapterSource(StrEnum):
    PROFILE = "profile"    # declared in the profile (lora_adapters): changed there, not through the API
    RUNTIME = "runtime"    # loaded through the API, recorded in the database


@dataclass(frozen=True, slots=True)
class AdapterEntry:
    adapter: Adapter
    source: AdapterSource


class AdapterService:
    def __init__(self, catalog: ModelCatalog, database: Database, profile: dict[str, str]) -> None:
        self.catalog = catalog
        self.database = database
        self.profile = profile
        self.sources: dict[str, AdapterSource] = {}
        # One change at a time in this process: a name is checked, loaded and recorded as one step.
        self._changing = asyncio.Lock()
        # Recorded adapters the engine refused here (name, path): said once in the log, not at every sync.
        self._refused: set[tuple[str, str]] = set()

    async def start(self) -> None:
        """Load the profile's adapters (one the engine refuses stops the start: the profile is wrong), then the
        recorded ones (one the engine refuses now, its folder gone say, is left out with an error in the log)."""
        for name, path in self.profile.items():
            adapter = Adapter(name, path)
            try:
                await self.catalog.engine.add_adapter(adapter)
            except AdapterLoadError as exc:
                raise RuntimeError(f"lora_adapters: the adapter {name!r} ({path}) does not load: {exc}") from None
            self._serve(adapter, AdapterSource.PROFILE)
        await self.sync()
        if self.catalog.adapters:
            logger.info("serving %d LoRA adapter(s) over %s: %s", len(self.catalog.adapters), self.catalog.base_name,
                        ", ".join(sorted(self.catalog.adapters)))

    async def sync(self) -> None:
        """Serve what the database records, as another process or replica loaded or unloaded it: run at the start
        and every adapter_sync_s. A recorded adapter the engine refuses (its folder gone, say) is left out, with an
        error in the log."""
        async with self.database.session() as session:
            recorded = {row.name: row.path for row in await LoraAdapters(session).all()}
        async with self._changing:
            for name, path in recorded.items():
                served = self.catalog.adapters.get(name)
                if self.sources.get(name) == AdapterSource.PROFILE or (served is not None and served.path == path):
                    continue
                adapter = Adapter(name, path)
                try:
                    await self.catalog.engine.add_adapter(adapter)
                except AdapterLoadError as exc:
                    if (name, path) not in self._refused:
                        self._refused.add((name, path))
                        logger.error("the recorded LoRA adapter %r (%s) does not load, so it is not served: %s",
                                     name, path, exc)
                    continue
                self._serve(adapter, AdapterSource.RUNTIME)
            for name in [n for n, source in self.sources.items() if source == AdapterSource.RUNTIME
                         and n not in recorded]:
                # Unloaded elsewhere: the engine core may be this process's too, where it is dropped already.
                del self.sources[name]
                self.catalog.adapters.pop(name, None)

    def entries(self, principal: Principal) -> list[AdapterEntry]:
        require_admin(principal)
        return [AdapterEntry(adapter, self.sources[name]) for name, adapter in sorted(self.catalog.adapters.items())]

    async def load(self, principal: Principal, name: str, path: str) -> AdapterEntry:
        """Raises Forbidden (not an admin), Conflict (the name is taken), InvalidRequest (a relative path, or the
        engine refused the adapter: its reason)."""
        require_admin(principal)
        check_name(name)
        if not Path(path).is_absolute():
            raise InvalidRequest("lora_path must be an absolute path on the server (every replica reads it there)",
                                 param="lora_path")
        async with self._changing:
            self._check_free(name)
            adapter = Adapter(name, path)
            try:
                await self.catalog.engine.add_adapter(adapter)
            except AdapterLoadError as exc:
                raise InvalidRequest(f"the adapter {name!r} does not load: {exc}", param="lora_path") from None
            try:
                async with self.database.session() as session:
                    await LoraAdapters(session).add(name, path, principal.user_id)
                    await session.commit()
            except IntegrityError:
                # Another process recorded the name first: this one's load is undone.
                await self.catalog.engine.remove_adapter(adapter)
                raise Conflict(f"a LoRA adapter named {name!r} is already loaded", param="lora_name") from None
            self._serve(adapter, AdapterSource.RUNTIME)
        logger.info("loaded the LoRA adapter %r from %s", name, path)
        return AdapterEntry(adapter, AdapterSource.RUNTIME)

    async def unload(self, principal: Principal, name: str) -> AdapterEntry:
        """Raises Forbidden, NotFound, or InvalidRequest for an adapter the profile declares."""
        require_admin(principal)
        async with self._changing:
            adapter = self.catalog.adapters.get(name)
            if adapter is None:
                raise NotFound(f"no LoRA adapter named {name!r} is loaded", param="lora_name")
            if self.sources[name] == AdapterSource.PROFILE:
                raise InvalidRequest(f"the adapter {name!r} is declared in the profile (lora_adapters): remove it "
                                     "there", param="lora_name")
            async with self.database.session() as session:
                await LoraAdapters(session).remove(name)
                await session.commit()
            del self.catalog.adapters[name], self.sources[name]
            await self.catalog.engine.remove_adapter(adapter)
        logger.info("unloaded the LoRA adapter %r", name)
        return AdapterEntry(adapter, AdapterSource.RUNTIME)

    def _check_free(self, name: str) -> None:
        if name == self.catalog.base_name or name in self.catalog.adapters:
            what = "the base model" if name == self.catalog.base_name else "a loaded LoRA adapter"
            raise Conflict(f"the name {name!r} is taken by {what}; unload it first or choose another",
                           param="lora_name")

    def _serve(self, adapter: Adapter, source: AdapterSource) -> None:
        self.catalog.adapters[adapter.name] = adapter
        self.sources[adapter.name] = source


def require_admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise Forbidden(ADMINS_ONLY)


def check_name(name: str) -> None:
    if not name or len(name) > MAX_ADAPTER_NAME_CHARS or name != name.strip() or "\x00" in name:
        raise InvalidRequest(f"lora_name must be 1 to {MAX_ADAPTER_NAME_CHARS} characters, without surrounding "
                             "spaces", param="lora_name")
