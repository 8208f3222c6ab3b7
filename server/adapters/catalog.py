"""The models this server serves (the base model and its LoRA adapters) and which of them a caller may use: every
dialect's `model` field is resolved here, and a model the caller may not use answers as one that does not exist."""

from __future__ import annotations

from dataclasses import dataclass

from engine import Adapter, EngineClient
from server.exceptions import NotFound
from server.security.auth import Principal

# A name an adapter may take: what vLLM's model names and a URL path segment both hold.
MAX_ADAPTER_NAME_CHARS = 200


@dataclass(frozen=True, slots=True)
class ServedModel:
    """What a request's `model` names: the base model (adapter None) or one of its adapters."""

    name: str
    adapter: Adapter | None = None


@dataclass(frozen=True, slots=True)
class ModelCard:
    """A /v1/models entry: an adapter's parent is the base model's name, its root the adapter's folder."""

    id: str
    root: str
    parent: str | None


class ModelCatalog:
    """The served models, in this process. Adapters come from the profile and from the database (server.adapters.
    service keeps both here); a request for an adapter passes the engine a LoRA request (engine.Adapter)."""

    def __init__(self, engine: EngineClient) -> None:
        self.engine = engine
        self.adapters: dict[str, Adapter] = {}

    @property
    def base_name(self) -> str:
        return self.engine.model_name

    def resolve(self, principal: Principal | None, requested: str | None) -> ServedModel:
        """The model a request names (None: the base model), when it is served and the caller may use it; any
        other is a 404 that does not say which of the two it is."""
        name = self.base_name if requested is None else requested
        adapter = self.adapters.get(name)
        if (name != self.base_name and adapter is None) or not may_use(principal, name):
            raise NotFound(f"the model {name!r} does not exist; GET /v1/models lists the models you may use",
                           param="model")
        return ServedModel(name, adapter)

    def cards(self, principal: Principal | None) -> list[ModelCard]:
        """The models the caller may use: the base model first, then the adapters by name."""
        cards = [ModelCard(self.base_name, self.engine.model_path, None)]
        cards += [ModelCard(a.name, a.path, self.base_name) for a in sorted(self.adapters.values(),
                                                                            key=lambda a: a.name)]
        return [card for card in cards if may_use(principal, card.id)]


def may_use(principal: Principal | None, model: str) -> bool:
    return principal is None or principal.models is None or model in principal.models
