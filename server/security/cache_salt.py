"""Prefix-cache isolation between tenants: vLLM's prefix cache would let one tenant time another's prompts (a hit
is faster). With isolation on, every request's cache_salt is derived from its user (and the request's own salt,
if it sent one), so prefixes are shared within a user only."""

from __future__ import annotations

import hashlib
import hmac
from enum import StrEnum
from typing import Any

from server.security.auth import Principal

CACHE_SALT = "cache_salt"


class CacheIsolation(StrEnum):
    TENANT = "tenant"  # one prefix cache per user
    SHARED = "shared"  # vllm serve's behaviour: one cache for everyone


class CacheSalter:
    def __init__(self, isolation: CacheIsolation, secret: str) -> None:
        self.isolation = isolation
        self.secret = secret.encode()

    def apply(self, fields: dict[str, Any], principal: Principal | None) -> None:
        """Sets fields["cache_salt"] to the caller's tenant salt (an HMAC: not guessable from a user id)."""
        if self.isolation == CacheIsolation.SHARED or principal is None:
            return
        own = fields.get(CACHE_SALT) or ""
        digest = hmac.new(self.secret, f"{principal.user_id}|{own}".encode(), hashlib.sha256).hexdigest()
        fields[CACHE_SALT] = digest
