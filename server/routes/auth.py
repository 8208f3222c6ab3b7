"""Identity routes: POST /api/v1/auth/token (OAuth2 password grant), API keys (create, list, revoke) and users
(admin)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any

import msgspec
from msgspec import Meta
from sqlalchemy.exc import IntegrityError
from starlette.requests import Request
from starlette.responses import Response

from server.auth import Authenticator, Principal
from server.credentials import api_key_hash, hash_password, new_api_key, verify_password, visible_prefix
from server.errors import APIError
from server.routes.system import json_response
from server.schemas import Count, decode_body
from server.tokens import TokenService
from storage import Database
from storage.models import ApiKey
from storage.repository import ApiKeys, Users

Limit = Count  # 0 = unlimited for this key


class NewKey(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, Meta(max_length=200)] = ""
    expires_in_days: Annotated[int, Meta(ge=1, le=3650)] | None = None
    requests_per_minute: Limit | None = None
    tokens_per_minute: Limit | None = None
    max_concurrent_streams: Limit | None = None


class NewUser(msgspec.Struct, forbid_unknown_fields=True):
    username: Annotated[str, Meta(min_length=1, max_length=150, pattern=r"^[A-Za-z0-9_.@-]+$")]
    password: Annotated[str, Meta(min_length=8, max_length=1024)]
    is_admin: bool = False


def principal_of(request: Request) -> Principal:
    return request.state.principal


def key_view(key: ApiKey) -> dict[str, Any]:
    return {
        "id": str(key.id), "name": key.name, "prefix": key.prefix,
        "created_at": key.created_at.isoformat(), "expires_at": key.expires_at.isoformat() if key.expires_at else None,
        "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
        "requests_per_minute": key.requests_per_minute, "tokens_per_minute": key.tokens_per_minute,
        "max_concurrent_streams": key.max_concurrent_streams,
    }


async def issue_token(request: Request) -> Response:
    """OAuth2 password grant (form fields username, password, grant_type=password)."""
    try:
        form = await request.form()
    except Exception:  # malformed multipart or urlencoded body
        raise APIError(400, "send the credentials as a form: username, password, grant_type=password") from None
    grant_type, username, password = form.get("grant_type"), form.get("username"), form.get("password")
    if grant_type not in (None, "password"):
        raise APIError(400, "unsupported grant_type: only 'password'", param="grant_type")
    if not isinstance(username, str) or not isinstance(password, str) or not username or not password:
        raise APIError(400, "username and password are required form fields", param="username")
    database: Database = request.app.state.database
    async with database.session() as session:
        user = await Users(session).by_username(username)
    # Verified even for unknown users, so that response time does not tell which usernames exist.
    if not await verify_password(user.password_hash if user else None, password) or user is None:
        raise APIError(401, "incorrect username or password", headers={"WWW-Authenticate": "Bearer"})
    tokens: TokenService = request.app.state.tokens
    token, lifetime = tokens.issue(user.id, user.username, user.is_admin)
    return json_response({"access_token": token, "token_type": "bearer", "expires_in": lifetime})


async def create_key(request: Request) -> Response:
    principal = principal_of(request)
    spec: NewKey = decode_body(await request.body(), NewKey)
    overrides = (spec.requests_per_minute, spec.tokens_per_minute, spec.max_concurrent_streams)
    if any(value is not None for value in overrides) and not principal.is_admin:
        raise APIError(403, "only an admin may set a key's own limits")
    key = new_api_key()
    expires_at = datetime.now(timezone.utc) + timedelta(days=spec.expires_in_days) if spec.expires_in_days else None
    async with request.app.state.database.session() as session:
        record = await ApiKeys(session).create(
            principal.user_id, key_hash=api_key_hash(key), prefix=visible_prefix(key), name=spec.name,
            expires_at=expires_at, requests_per_minute=spec.requests_per_minute,
            tokens_per_minute=spec.tokens_per_minute, max_concurrent_streams=spec.max_concurrent_streams)
        await session.commit()
    # The only time the key itself is shown.
    return json_response({**key_view(record), "key": key}, status_code=201)


async def list_keys(request: Request) -> Response:
    async with request.app.state.database.session() as session:
        keys = await ApiKeys(session).list_for(principal_of(request).user_id)
    return json_response({"object": "list", "data": [key_view(k) for k in keys]})


def parse_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


async def revoke_key(request: Request) -> Response:
    principal = principal_of(request)
    key_id = parse_uuid(request.path_params["key_id"])
    async with request.app.state.database.session() as session:
        keys = ApiKeys(session)
        record = await keys.get(principal.user_id, key_id) if key_id else None
        # Someone else's key and no key at all look the same: 404.
        if record is None or not await keys.revoke(principal.user_id, record.id):
            raise APIError(404, "no such API key", param="key_id")
        await session.commit()
    authenticator: Authenticator | None = request.app.state.authenticator
    if authenticator is not None:
        authenticator.forget_key(record.key_hash)
    return Response(status_code=204)


async def create_user(request: Request) -> Response:
    if not principal_of(request).is_admin:
        raise APIError(403, "only an admin may create users")
    spec: NewUser = decode_body(await request.body(), NewUser)
    password_hash = await hash_password(spec.password)
    async with request.app.state.database.session() as session:
        try:
            user = await Users(session).create(spec.username, password_hash=password_hash, is_admin=spec.is_admin)
            await session.commit()
        except IntegrityError:
            raise APIError(409, f"the username {spec.username!r} is taken", param="username") from None
    return json_response({"id": str(user.id), "username": user.username, "is_admin": user.is_admin},
                         status_code=201)
