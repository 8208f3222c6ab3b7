"""Who may read /metrics and /version with auth on: anyone (metrics_public), or an admin's credentials or the
metrics token (a bearer token for Prometheus alone). They name the model, the versions and every tenant's load."""

from __future__ import annotations

import hmac

from server.exceptions import Forbidden
from server.security.access import AccessPolicy
from server.security.auth import bearer_token

NOT_AN_OPERATOR = "/metrics and /version need an admin's credentials or the metrics token (or metrics_public: true)"


class OperatorEndpoints:
    def __init__(self, policy: AccessPolicy, *, public: bool, token: str | None) -> None:
        self.policy = policy
        self.public = public or policy.authenticator is None
        self.token = token.encode() if token else None

    async def check(self, authorization: bytes | None, address: str | None) -> None:
        """Raises AuthenticationFailed (401), Forbidden (403), or RateLimited after too many failed credentials."""
        if self.public:
            return
        if self.token is not None and hmac.compare_digest(bearer_token(authorization).encode(), self.token):
            return
        principal = await self.policy.identify(authorization, address)
        if not principal.is_admin:
            raise Forbidden(NOT_AN_OPERATOR)
