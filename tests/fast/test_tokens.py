"""JWTs without a server: the claims a token must carry (expiry, audience, issuer, signature, jti; alg none and
tampering refused), and an RS256 key pair that refuses the HS256 algorithm-confusion forgery."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from joserfc import jwt
from joserfc.jwk import OctKey, RSAKey

from server.security.tokens import InvalidTokenError, TokenService

from support.token_service import SECRET, service


def test_token_claims_are_checked() -> None:
    good = service()
    user_id = uuid.uuid4()
    token, _ = good.issue(user_id, "ann", False)
    claims = good.verify(token)
    assert (claims.user_id, claims.username, claims.is_admin) == (user_id, "ann", False)

    rejected = {
        "expired": service(lifetime_s=-60).issue(user_id, "ann", False)[0],
        "other audience": service(audience="someone-else").issue(user_id, "ann", False)[0],
        "other issuer": service(issuer="evil").issue(user_id, "ann", False)[0],
        "other secret": service(secret="another-secret-key-with-enough-entropy-987").issue(user_id, "ann", False)[0],
        "tampered": tamper(token),
        "no jti": jwt.encode({"alg": "HS256"}, {"iss": "codeface", "aud": "codeface-api", "sub": str(user_id),
                                                "iat": int(time.time()), "exp": int(time.time()) + 60},
                             OctKey.import_key(SECRET.encode())),
        "alg none": unsigned(token),
        "garbage": "a.b.c",
    }
    for name, bad in rejected.items():
        with pytest.raises(InvalidTokenError):
            good.verify(bad)
            pytest.fail(f"accepted a token with {name}")


def tamper(token: str) -> str:
    import base64
    import json

    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["adm"] = True
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


def unsigned(token: str) -> str:
    import base64

    header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    return f"{header}.{token.split('.')[1]}."


def test_rs256_key_pair(tmp_path: Path) -> None:
    key = RSAKey.generate_key(2048, private=True)
    (tmp_path / "private.pem").write_bytes(key.as_pem(private=True))
    (tmp_path / "public.pem").write_bytes(key.as_pem(private=False))
    rs = TokenService("RS256", secret="", issuer="codeface", audience="codeface-api", lifetime_s=60,
                      private_key_file=tmp_path / "private.pem", public_key_file=tmp_path / "public.pem")
    token, _ = rs.issue(uuid.uuid4(), "ann", False)
    assert rs.verify(token).username == "ann"
    # An HS256 token signed with the public key as its secret (algorithm confusion) is refused.
    with pytest.raises(InvalidTokenError):
        rs.verify(hs256_signed_with(key.as_pem(private=False), {"iss": "codeface", "aud": "codeface-api",
                                                                "sub": str(uuid.uuid4()), "iat": int(time.time()),
                                                                "exp": int(time.time()) + 60, "jti": "x"}))


def hs256_signed_with(secret: bytes, claims: dict[str, object]) -> str:
    """By hand: JOSE libraries refuse to use a public key as an HMAC secret, which is what an attacker does."""
    import base64
    import hashlib
    import hmac
    import json

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = json.dumps({"alg": "HS256", "typ": "JWT"}).encode()
    signing_input = b64(header) + "." + b64(json.dumps(claims).encode())
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"
