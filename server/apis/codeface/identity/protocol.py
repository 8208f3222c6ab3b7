"""Request bodies of the identity routes (new API key, new user) and the JSON view of a key."""

from __future__ import annotations

import re
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from server.apis.decode import NO_NUL, Count
from storage.models import ApiKey

Limit = Count  # 0 = unlimited for this key
MAX_KEY_LIFETIME_DAYS = 3650
USERNAME_PATTERN = r"^[A-Za-z0-9_.@-]+$"
MAX_USERNAME_LENGTH = 150
MIN_PASSWORD_LENGTH = 8
MAX_KEY_WEIGHT = 1000
MAX_ALLOWED_MODELS = 100
ModelName = Annotated[str, Meta(min_length=1, max_length=200, pattern=NO_NUL)]
# The models (base model, adapters) a key or user may use; unset: all (a key's are within its user's).
AllowedModels = Annotated[list[ModelName], Meta(max_length=MAX_ALLOWED_MODELS)]


class NewKey(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, Meta(max_length=200, pattern=NO_NUL)] = ""
    expires_in_days: Annotated[int, Meta(ge=1, le=MAX_KEY_LIFETIME_DAYS)] | None = None
    requests_per_minute: Limit | None = None
    tokens_per_minute: Limit | None = None
    max_concurrent_streams: Limit | None = None
    # Share of the engine's queue under overload (fairness), relative to other tenants' keys; default 1.
    weight: Annotated[int, Meta(ge=1, le=MAX_KEY_WEIGHT)] | None = None
    models: AllowedModels | None = None

    @property
    def sets_limits(self) -> bool:
        return any(value is not None for value in (self.requests_per_minute, self.tokens_per_minute,
                                                   self.max_concurrent_streams, self.weight, self.models))


class NewUser(msgspec.Struct, forbid_unknown_fields=True):
    username: Annotated[str, Meta(min_length=1, max_length=MAX_USERNAME_LENGTH, pattern=USERNAME_PATTERN)]
    password: Annotated[str, Meta(min_length=MIN_PASSWORD_LENGTH, max_length=1024)]
    is_admin: bool = False
    models: AllowedModels | None = None


def possible_username(name: str) -> bool:
    """Whether a user could have this name (NewUser's rules): a login under any other name is not looked up."""
    return len(name) <= MAX_USERNAME_LENGTH and re.fullmatch(USERNAME_PATTERN, name) is not None


def key_view(key: ApiKey) -> dict[str, Any]:
    return {
        "id": str(key.id), "name": key.name, "prefix": key.prefix,
        "created_at": key.created_at.isoformat(), "expires_at": key.expires_at.isoformat() if key.expires_at else None,
        "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
        "requests_per_minute": key.requests_per_minute, "tokens_per_minute": key.tokens_per_minute,
        "max_concurrent_streams": key.max_concurrent_streams, "weight": key.weight,
        "models": key.allowed_models,
    }
