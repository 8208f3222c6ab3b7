"""Who is calling: the credentials in the Authorization header resolved to a Principal, or, with auth off, the one
default user (still rate limited), created in the database on first use."""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError

from server.exceptions import AuthenticationFailed
from server.security.auth import Authenticator, Principal, bearer_token
from server.security.budgets import AbuseBudget
from server.security.ratelimit import Quota
from storage import Database
from storage.models import User
from storage.repository import Users


class AccessPolicy:
    """`authenticator` None means auth is off: every caller is the default user. `failures`: the budget of failed
    credentials per client address (each unknown API key costs a database lookup); past it, 429 with Retry-After
    before any lookup."""

    def __init__(self, authenticator: Authenticator | None, database: Database, default_user: str,
                 default_quota: Quota, failures: AbuseBudget | None = None) -> None:
        self.authenticator = authenticator
        self.database = database
        self.default_user = default_user
        self.default_quota = default_quota
        self.failures = failures
        self._anonymous: Principal | None = None

    async def identify(self, authorization: bytes | None, address: str | None = None) -> Principal:
        """Raises AuthenticationFailed, or RateLimited once `address` has failed too often."""
        if self.authenticator is None:
            return await self.anonymous()
        token = bearer_token(authorization)
        subject = f"auth-failures:{address or 'unknown'}"
        if self.failures is not None:
            self.failures.refuse_if_blocked(subject)
        try:
            return await self.authenticator.authenticate(token)
        except AuthenticationFailed:
            if self.failures is not None:
                await self.failures.spend(subject)
            raise

    async def anonymous(self) -> Principal:
        if self._anonymous is None:
            user: User | None
            async with self.database.session() as session:
                try:
                    user = await Users(session).get_or_create(self.default_user)
                    await session.commit()
                except IntegrityError:  # another request created it first
                    await session.rollback()
                    user = await Users(session).by_username(self.default_user)
            assert user is not None
            self._anonymous = Principal(user.id, True, self.default_quota)
        return self._anonymous
