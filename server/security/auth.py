"""Who is calling: a JWT or an API key in `Authorization: Bearer ...`, resolved to a Principal with its quota."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from server.exceptions import AuthenticationFailed
from server.security.credentials import api_key_hash, looks_like_api_key
from server.security.ratelimit import Budget, Quota
from server.security.tokens import InvalidTokenError, TokenService
from storage import Database
from storage.repository import ApiKeys, Users

logger = logging.getLogger(__name__)


INVALID_CREDENTIALS = "invalid or expired credentials"
# Keys the database did not know, remembered this long and this many (a flood repeating one fake key costs one
# lookup); a real key cannot be among them, as nobody can present it before it is issued.
UNKNOWN_KEYS_KEPT_S = 30.0
MAX_UNKNOWN_KEYS = 10_000


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: uuid.UUID
    is_admin: bool
    quota: Quota
    key_id: uuid.UUID | None = None
    # The user's aggregate quota over all its keys and tokens; None for admins (they set the limits).
    user_quota: Quota | None = None
    # The key's share of the engine's queue under overload (fairness); tokens and keys without one weigh 1.
    weight: int = 1
    # The models (base model, adapters) this caller may use, set by an admin on the user or the key; None: all.
    models: frozenset[str] | None = None

    @property
    def tenant(self) -> str:
        """Who shares the engine fairly: a user, with all its keys and tokens (more keys buy no bigger share)."""
        return f"user:{self.user_id}"

    @property
    def subject(self) -> str:
        """The rate-limit identity: the key for API keys, the user for JWTs."""
        return f"key:{self.key_id}" if self.key_id is not None else f"user:{self.user_id}"

    @property
    def budgets(self) -> list[Budget]:
        """Every budget a request of this caller counts against: its key's (or token's), then its user's."""
        own = Budget(self.subject, self.quota)
        if self.user_quota is None or self.key_id is None:
            return [own]
        return [own, Budget(f"user:{self.user_id}", self.user_quota)]


def bearer_token(authorization: bytes | None) -> str:
    if not authorization:
        raise AuthenticationFailed("missing credentials: send 'Authorization: Bearer <API key or token>' (or "
                                   "'x-api-key: <API key>')")
    scheme, _, token = authorization.decode("latin-1").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationFailed("the Authorization header must be 'Bearer <API key or token>'")
    return token.strip()


class Authenticator:
    """Verifies JWTs locally and API keys against the database, with a short in-process cache of key lookups."""

    def __init__(self, database: Database, tokens: TokenService, default_quota: Quota, cache_seconds: float,
                 user_quota: Quota | None = None) -> None:
        self.database = database
        self.tokens = tokens
        self.default_quota = default_quota
        self.user_quota = user_quota or default_quota
        self.cache_seconds = cache_seconds
        self._keys: dict[str, tuple[float, Principal, datetime | None]] = {}
        self._unknown: dict[str, float] = {}  # digest -> until (monotonic), oldest first
        # Lookups under way: the requests that miss the cache together (a wave of a new key's, or of any key's
        # when its entry lapses) share one, rather than each taking a database connection.
        self._lookups: dict[str, asyncio.Future[Principal]] = {}

    async def authenticate(self, token: str) -> Principal:
        if looks_like_api_key(token):
            return await self._api_key(token)
        try:
            claims = self.tokens.verify(token)
        except InvalidTokenError as exc:
            logger.info("rejected a token: %s", exc)
            raise AuthenticationFailed(INVALID_CREDENTIALS) from None
        # A token's budget is its user's aggregate (admins: the default quota).
        return Principal(claims.user_id, claims.is_admin, self.default_quota if claims.is_admin else self.user_quota,
                         models=claims.models)

    async def _api_key(self, key: str) -> Principal:
        digest = api_key_hash(key)
        cached = self._keys.get(digest)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            _, principal, expires_at = cached
            if expires_at is None or expires_at > datetime.now(UTC):
                return principal
        if self._unknown.get(digest, 0.0) > now:
            raise AuthenticationFailed(INVALID_CREDENTIALS)
        lookup = self._lookups.get(digest)
        if lookup is None:
            lookup = asyncio.ensure_future(self._look_up(digest, now))
            self._lookups[digest] = lookup
            lookup.add_done_callback(lambda done: self._looked_up(digest, done))
        # Shielded: a caller that goes away does not cancel the lookup the others wait for.
        return await asyncio.shield(lookup)

    def _looked_up(self, digest: str, lookup: asyncio.Future[Principal]) -> None:
        self._lookups.pop(digest, None)
        if not lookup.cancelled():
            lookup.exception()  # retrieved here: every waiter may have gone

    async def _look_up(self, digest: str, now: float) -> Principal:
        async with self.database.session() as session:
            record = await ApiKeys(session).by_hash(digest)
            user = await Users(session).get(record.owner_id) if record is not None else None
        if record is None or user is None or not hmac.compare_digest(record.key_hash, digest):
            self._remember_unknown(digest, now)
            raise AuthenticationFailed(INVALID_CREDENTIALS)
        expires_at = _aware(record.expires_at)
        if record.revoked_at is not None or (expires_at is not None and expires_at <= datetime.now(UTC)):
            self._keys.pop(digest, None)
            raise AuthenticationFailed(INVALID_CREDENTIALS)
        quota = Quota(
            requests_per_minute=_override(record.requests_per_minute, self.default_quota.requests_per_minute),
            tokens_per_minute=_override(record.tokens_per_minute, self.default_quota.tokens_per_minute),
            max_concurrent_streams=_override(record.max_concurrent_streams,
                                             self.default_quota.max_concurrent_streams),
        )
        principal = Principal(user.id, user.is_admin, quota, key_id=record.id,
                              user_quota=None if user.is_admin else self.user_quota, weight=record.weight or 1,
                              models=allowed_models(user.allowed_models, record.allowed_models))
        self._keys[digest] = (now + self.cache_seconds, principal, expires_at)
        return principal

    def _remember_unknown(self, digest: str, now: float) -> None:
        if len(self._unknown) >= MAX_UNKNOWN_KEYS:
            self._unknown = {key: until for key, until in self._unknown.items() if until > now}
            while len(self._unknown) >= MAX_UNKNOWN_KEYS:  # all live: the oldest go first
                del self._unknown[next(iter(self._unknown))]
        self._unknown[digest] = now + min(self.cache_seconds, UNKNOWN_KEYS_KEPT_S)

    def forget_key(self, key_hash: str) -> None:
        """Drop a revoked key from this process's cache at once (other replicas drop it within cache_seconds)."""
        self._keys.pop(key_hash, None)


def allowed_models(*limits: list[str] | None) -> frozenset[str] | None:
    """The models every one of `limits` allows (None: no limit)."""
    sets = [frozenset(limit) for limit in limits if limit is not None]
    return frozenset.intersection(*sets) if sets else None


def _override(value: int | None, default: int | None) -> int | None:
    # In the database, 0 means "unlimited" for this key; NULL means "the server's default".
    if value is None:
        return default
    return None if value == 0 else value


def _aware(moment: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; they were stored as UTC.
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment
