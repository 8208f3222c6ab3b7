"""Pure ASGI middleware: authenticate every request outside the open paths, count it against the caller's
requests-per-minute budget, and put RateLimit-* headers on the response."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.auth import AuthenticationError, Authenticator, Principal, bearer_token
from server.errors import error_for_scope
from server.logs import user_id_var
from server.metrics import rate_limit_rejections
from server.ratelimit import LimiterUnavailable, LimitExceeded, Quota, RateLimits, Window
from storage import Database
from storage.repository import Users


def window_headers(window: Window) -> list[tuple[bytes, bytes]]:
    return [(b"ratelimit-limit", str(window.limit).encode()),
            (b"ratelimit-remaining", str(window.remaining).encode()),
            (b"ratelimit-reset", str(window.reset_s).encode())]


@dataclass
class AccessPolicy:
    """`authenticator` None means auth is off: every caller is the default user (still rate limited), created in
    the database on first use."""

    authenticator: Authenticator | None
    limits: RateLimits
    open_paths: set[str]
    model: str
    database: Database
    default_user: str
    default_quota: Quota
    _anonymous: Principal | None = None

    async def anonymous(self) -> Principal:
        if self._anonymous is None:
            async with self.database.session() as session:
                try:
                    user = await Users(session).get_or_create(self.default_user)
                    await session.commit()
                except IntegrityError:  # another request created it first
                    await session.rollback()
                    user = await Users(session).by_username(self.default_user)
            assert user is not None
            self._anonymous = Principal(user.id, user.username, True, self.default_quota)
        return self._anonymous


class AccessControlMiddleware:
    def __init__(self, app: ASGIApp, *, policy: AccessPolicy) -> None:
        self.app = app
        self.policy = policy
        self.limits = policy.limits
        self.open_paths = policy.open_paths
        self.model = policy.model

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        try:
            principal = await self._identify(scope)
        except AuthenticationError as exc:
            response = error_for_scope(scope, 401, str(exc), headers={"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        token = user_id_var.set(str(principal.user_id))
        try:
            try:
                window = await self.limits.hit_request(principal.subject, principal.quota)
            except LimitExceeded as exc:
                rate_limit_rejections.labels(self.model, exc.limit).inc()
                headers = {"Retry-After": str(exc.retry_after_s)}
                if exc.window is not None:
                    headers.update({k.decode(): v.decode() for k, v in window_headers(exc.window)})
                await error_for_scope(scope, 429, str(exc), headers=headers)(scope, receive, send)
                return
            except LimiterUnavailable as exc:
                await error_for_scope(scope, 503, str(exc), headers={"Retry-After": "5"})(scope, receive, send)
                return
            if window is None:
                await self.app(scope, receive, send)
                return
            extra = window_headers(window)

            async def send_with_window(message: Message) -> None:
                if message["type"] == "http.response.start":
                    message["headers"] = [*message.get("headers", []), *extra]
                await send(message)

            await self.app(scope, receive, send_with_window)
        finally:
            user_id_var.reset(token)

    async def _identify(self, scope: Scope) -> Principal:
        if self.policy.authenticator is None:
            return await self.policy.anonymous()
        authorization = next((value for name, value in scope["headers"] if name == b"authorization"), None)
        return await self.policy.authenticator.authenticate(bearer_token(authorization))
