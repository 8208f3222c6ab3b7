"""Pure ASGI middleware: identify every request outside the open paths, count it against the caller's
requests-per-minute budget, and put RateLimit-* headers on the response."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import response_for_scope
from server.exceptions import ServiceError
from server.security.access import AccessPolicy
from server.security.ratelimit import LimitExceeded, RateLimits
from server.state import PRINCIPAL
from server.telemetry.logs import user_id_var
from server.telemetry.metrics import rate_limit_rejections

API_KEY_HEADER = b"x-api-key"


def credentials(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The Authorization header; else Anthropic's clients' x-api-key, read as the bearer token it carries."""
    authorization = next((value for name, value in headers if name == b"authorization"), None)
    if authorization is not None:
        return authorization
    api_key = next((value.strip() for name, value in headers if name == API_KEY_HEADER), b"")
    return b"Bearer " + api_key if api_key else None


class AccessControlMiddleware:
    def __init__(self, app: ASGIApp, *, policy: AccessPolicy, limits: RateLimits, open_paths: set[str],
                 open_prefixes: tuple[str, ...], model: str) -> None:
        self.app = app
        self.policy = policy
        self.limits = limits
        self.open_paths = open_paths
        self.open_prefixes = open_prefixes
        self.model = model

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths or scope["path"].startswith(self.open_prefixes):
            await self.app(scope, receive, send)
            return
        authorization = credentials(scope["headers"])
        try:
            client = scope.get("client")
            principal = await self.policy.identify(authorization, client[0] if client else None)
        except ServiceError as exc:
            await response_for_scope(scope, exc)(scope, receive, send)
            return
        scope.setdefault("state", {})[PRINCIPAL] = principal
        token = user_id_var.set(str(principal.user_id))
        try:
            try:
                window = await self.limits.hit_requests(principal.budgets)
            except ServiceError as exc:
                if isinstance(exc, LimitExceeded):
                    rate_limit_rejections.labels(self.model, exc.limit).inc()
                await response_for_scope(scope, exc)(scope, receive, send)
                return
            if window is None:
                await self.app(scope, receive, send)
                return
            extra = [(name.lower().encode(), value.encode()) for name, value in window.headers().items()]

            async def send_with_window(message: Message) -> None:
                if message["type"] == "http.response.start":
                    message["headers"] = [*message.get("headers", []), *extra]
                await send(message)

            await self.app(scope, receive, send_with_window)
        finally:
            user_id_var.reset(token)
