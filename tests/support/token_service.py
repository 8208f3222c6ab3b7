"""A TokenService (HS256) signed with the test server's secret key, or with the claims or key a test changes."""

from __future__ import annotations

from server.security.tokens import TokenService

SECRET = "test-secret-key-with-enough-entropy-0123456789"  # conftest's server_settings: the test server's key


def service(**changes: object) -> TokenService:
    values = {"secret": SECRET, "issuer": "codeface", "audience": "codeface-api", "lifetime_s": 600, **changes}
    return TokenService("HS256", **values)  # type: ignore[arg-type]
