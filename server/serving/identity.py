"""Users and API keys: password login, the one way a key is issued (the routes and the admin CLI both call it),
listing and revoking keys, creating users."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.exc import IntegrityError

from server.exceptions import AuthenticationFailed, Conflict, Forbidden, NotFound
from server.protocol.identity import NewKey
from server.security.auth import Authenticator, Principal
from server.security.credentials import api_key_hash, hash_password, new_api_key, verify_password, visible_prefix
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


class IdentityService:
    def __init__(self, database: Database, tokens: TokenService | None, authenticator: Authenticator | None) -> None:
        self.database = database
        self.tokens = tokens
        self.authenticator = authenticator

    async def login(self, username: str, password: str) -> IssuedToken:
        async with self.database.session() as session:
            user = await Users(session).by_username(username)
        # Verified even for unknown users, so that response time does not tell which usernames exist.
        if not await verify_password(user.password_hash if user else None, password) or user is None:
            raise AuthenticationFailed("incorrect username or password")
        if self.tokens is None:
            raise Forbidden("this server issues no tokens")
        token, lifetime = self.tokens.issue(user.id, user.username, user.is_admin)
        return IssuedToken(token, lifetime)

    async def issue_key(self, principal: Principal, spec: NewKey) -> IssuedKey:
        if spec.sets_limits and not principal.is_admin:
            raise Forbidden("only an admin may set a key's own limits")
        return await self.issue_key_for(principal.user_id, spec)

    async def issue_key_for(self, owner_id: uuid.UUID, spec: NewKey) -> IssuedKey:
        """The one way a key is made: 256 random bits, stored as a hash with a visible prefix."""
        secret = new_api_key()
        expires_at = (datetime.now(UTC) + timedelta(days=spec.expires_in_days)
                      if spec.expires_in_days else None)
        async with self.database.session() as session:
            record = await ApiKeys(session).create(
                owner_id, key_hash=api_key_hash(secret), prefix=visible_prefix(secret), name=spec.name,
                expires_at=expires_at, requests_per_minute=spec.requests_per_minute,
                tokens_per_minute=spec.tokens_per_minute, max_concurrent_streams=spec.max_concurrent_streams)
            await session.commit()
        return IssuedKey(record, secret)

    async def list_keys(self, owner_id: uuid.UUID) -> list[ApiKey]:
        async with self.database.session() as session:
            return await ApiKeys(session).list_for(owner_id)

    async def revoke_key(self, owner_id: uuid.UUID, key_id: uuid.UUID | None) -> None:
        async with self.database.session() as session:
            keys = ApiKeys(session)
            record = await keys.get(owner_id, key_id) if key_id else None
            # Someone else's key and no key at all look the same: 404.
            if record is None or not await keys.revoke(owner_id, record.id):
                raise NotFound("no such API key", param="key_id")
            await session.commit()
        if self.authenticator is not None:
            self.authenticator.forget_key(record.key_hash)

    async def create_user(self, principal: Principal | None, username: str, password: str, is_admin: bool) -> User:
        """`principal` None: the admin CLI, which needs no credentials."""
        if principal is not None and not principal.is_admin:
            raise Forbidden("only an admin may create users")
        password_hash = await hash_password(password)
        async with self.database.session() as session:
            try:
                user = await Users(session).create(username, password_hash=password_hash, is_admin=is_admin)
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
