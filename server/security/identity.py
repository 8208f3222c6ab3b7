"""Users and API keys: password login, the one way a key is issued (the routes and the admin CLI both call it),
listing and revoking keys, creating users."""

from __future__ import annotations

import uuid
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.exc import IntegrityError

from server.apis.codeface.identity.protocol import NewKey, possible_username
from server.exceptions import AuthenticationFailed, Conflict, Forbidden, NotFound
from server.security.auth import Authenticator, Principal
from server.security.credentials import api_key_hash, hash_password, new_api_key, verify_password, visible_prefix
from server.security.login import LoginGuard
from server.security.tokens import TokenService
from storage import Database
from storage.models import ApiKey, User
from storage.repository import ApiKeys, Users


@dataclass(frozen=True, slots=True)
class IssuedKey:
    record: ApiKey
    secret: str  # shown once, never stored


@dataclass(frozen=True, slots=True)
class IssuedToken:
    access_token: str
    expires_in: int


AUTH_OFF = "auth is off (auth_enabled: false): there are no identities to manage"


class IdentityService:
    """`authenticator` None means auth is off: the identity routes refuse (what they would make would persist and
    apply once auth is on). The admin CLI passes no principal and needs no credentials."""

    def __init__(self, database: Database, tokens: TokenService | None, authenticator: Authenticator | None, *,
                 login_guard: LoginGuard | None = None, max_keys_per_user: int | None = None) -> None:
        self.database = database
        self.tokens = tokens
        self.authenticator = authenticator
        self.login_guard = login_guard
        self.max_keys_per_user = max_keys_per_user

    def _require_auth(self) -> None:
        if self.authenticator is None:
            raise Forbidden(AUTH_OFF)

    def _require_key_manager(self, principal: Principal) -> None:
        """Keys are managed with a password login (a JWT) or by an admin: a leaked key cannot mint successors."""
        self._require_auth()
        if principal.key_id is not None and not principal.is_admin:
            raise Forbidden("API keys are managed with a password login (POST /api/v1/auth/token), not with a key")

    async def login(self, username: str, password: str, address: str | None = None) -> IssuedToken:
        self._require_auth()
        if self.login_guard is not None:
            await self.login_guard.check(address, username)
        user = None
        # A name no user can have (a NUL, say, which Postgres text refuses) is not looked up: it simply fails.
        if possible_username(username):
            async with self.database.session() as session:
                user = await Users(session).by_username(username)
        # Verified even for unknown users, so that response time does not tell which usernames exist.
        async with self._hashing():
            verified = await verify_password(user.password_hash if user else None, password)
        if not verified or user is None:
            raise AuthenticationFailed("incorrect username or password")
        if self.tokens is None:
            raise Forbidden("this server issues no tokens")
        token, lifetime = self.tokens.issue(user.id, user.username, user.is_admin, user.allowed_models)
        return IssuedToken(token, lifetime)

    def _hashing(self) -> AbstractAsyncContextManager[None]:
        return self.login_guard.hashing() if self.login_guard is not None else nullcontext()

    async def issue_key(self, principal: Principal, spec: NewKey) -> IssuedKey:
        self._require_key_manager(principal)
        if spec.sets_limits and not principal.is_admin:
            raise Forbidden("only an admin may set a key's own limits, weight or models")
        return await self.issue_key_for(principal.user_id, spec, capped=not principal.is_admin)

    async def issue_key_for(self, owner_id: uuid.UUID, spec: NewKey, *, capped: bool = False) -> IssuedKey:
        """The one way a key is made: 256 random bits, stored as a hash with a visible prefix. `capped`: refuse
        past max_keys_per_user active keys (admins and the admin CLI are not capped)."""
        if capped and self.max_keys_per_user is not None:
            async with self.database.session() as session:
                active = await ApiKeys(session).count_active(owner_id)
            if active >= self.max_keys_per_user:
                raise Conflict(f"this user has {active} active keys, the most allowed; revoke one first",
                               param="max_keys_per_user")
        secret = new_api_key()
        expires_at = (datetime.now(UTC) + timedelta(days=spec.expires_in_days)
                      if spec.expires_in_days else None)
        async with self.database.session() as session:
            record = await ApiKeys(session).create(
                owner_id, key_hash=api_key_hash(secret), prefix=visible_prefix(secret), name=spec.name,
                expires_at=expires_at, requests_per_minute=spec.requests_per_minute,
                tokens_per_minute=spec.tokens_per_minute, max_concurrent_streams=spec.max_concurrent_streams,
                weight=spec.weight, allowed_models=spec.models)
            await session.commit()
        return IssuedKey(record, secret)

    async def list_keys(self, principal: Principal) -> list[ApiKey]:
        self._require_key_manager(principal)
        async with self.database.session() as session:
            return await ApiKeys(session).list_for(principal.user_id)

    async def revoke_key(self, principal: Principal, key_id: uuid.UUID | None) -> None:
        self._require_key_manager(principal)
        owner_id = principal.user_id
        async with self.database.session() as session:
            keys = ApiKeys(session)
            record = await keys.get(owner_id, key_id) if key_id else None
            # Someone else's key and no key at all look the same: 404.
            if record is None or not await keys.revoke(owner_id, record.id):
                raise NotFound("no such API key", param="key_id")
            await session.commit()
        if self.authenticator is not None:
            self.authenticator.forget_key(record.key_hash)

    async def create_user(self, principal: Principal | None, username: str, password: str, is_admin: bool,
                          models: list[str] | None = None) -> User:
        """`principal` None: the admin CLI, which needs no credentials. `models`: what the user may use (None:
        all)."""
        if principal is not None:
            self._require_auth()
            if not principal.is_admin:
                raise Forbidden("only an admin may create users")
        async with self._hashing():
            password_hash = await hash_password(password)
        async with self.database.session() as session:
            try:
                user = await Users(session).create(username, password_hash=password_hash, is_admin=is_admin,
                                                   allowed_models=models)
                await session.commit()
            except IntegrityError:
                raise Conflict(f"the username {username!r} is taken", param="username") from None
        return user

    async def user_by_name(self, username: str) -> User:
        async with self.database.session() as session:
            user = await Users(session).by_username(username)
        if user is None:
            raise NotFound(f"no user {username!r}: create it first with `codeface admin create-user`",
                           param="username")
        return user
