"""JWT access tokens, signed and verified with joserfc (authlib's JOSE implementation, which authlib itself now
delegates to): HS256 with SECRET_KEY by default, RS256/ES256 with a configured key pair."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OctKey, RSAKey
from joserfc.jwt import JWTClaimsRegistry

Key = OctKey | RSAKey | ECKey
# The models a token's user may use (absent: all).
MODELS_CLAIM = "mdl"


class InvalidTokenError(Exception):
    """The token is malformed, forged, expired, or meant for another issuer or audience."""


@dataclass(frozen=True, slots=True)
class TokenClaims:
    user_id: uuid.UUID
    username: str
    is_admin: bool
    # The user's allowed models when the token was issued (None: all); a change applies to tokens issued after it.
    models: frozenset[str] | None = None


class TokenService:
    def __init__(self, algorithm: str, *, secret: str, issuer: str, audience: str, lifetime_s: int,
                 private_key_file: Path | None = None, public_key_file: Path | None = None) -> None:
        self.algorithm = algorithm
        self.issuer = issuer
        self.audience = audience
        self.lifetime_s = lifetime_s
        if algorithm == "HS256":
            self.signing_key: Key = OctKey.import_key(secret.encode())
            self.verifying_key: Key = self.signing_key
        else:
            if private_key_file is None or public_key_file is None:
                raise ValueError(f"{algorithm} needs jwt_private_key_file and jwt_public_key_file")
            key_type = RSAKey if algorithm == "RS256" else ECKey
            self.signing_key = key_type.import_key(private_key_file.read_bytes())
            self.verifying_key = key_type.import_key(public_key_file.read_bytes())
        self.registry = JWTClaimsRegistry(
            leeway=5,
            iss={"essential": True, "value": issuer},
            aud={"essential": True, "value": audience},
            sub={"essential": True},
            exp={"essential": True},
            iat={"essential": True},
            jti={"essential": True},
        )

    def issue(self, user_id: uuid.UUID, username: str, is_admin: bool,
              models: list[str] | None = None) -> tuple[str, int]:
        """A signed token and its lifetime in seconds."""
        now = int(time.time())
        claims: dict[str, object] = {"iss": self.issuer, "aud": self.audience, "sub": str(user_id), "iat": now,
                                     "exp": now + self.lifetime_s, "jti": uuid.uuid4().hex, "name": username,
                                     "adm": is_admin}
        if models is not None:
            claims[MODELS_CLAIM] = list(models)
        return jwt.encode({"alg": self.algorithm}, claims, self.signing_key, algorithms=[self.algorithm]), \
            self.lifetime_s

    def verify(self, token: str) -> TokenClaims:
        try:
            # Only the configured algorithm is accepted: no "none", no HS256-with-a-public-key confusion.
            decoded = jwt.decode(token, self.verifying_key, algorithms=[self.algorithm])
            self.registry.validate(decoded.claims)
            claims = decoded.claims
            models = claims.get(MODELS_CLAIM)
            return TokenClaims(uuid.UUID(claims["sub"]), str(claims.get("name", "")), bool(claims.get("adm")),
                               frozenset(str(m) for m in models) if isinstance(models, list) else None)
        except (JoseError, ValueError, KeyError, TypeError) as exc:
            raise InvalidTokenError(str(exc) or type(exc).__name__) from None
