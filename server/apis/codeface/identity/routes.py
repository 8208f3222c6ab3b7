"""Identity routes: POST /api/v1/auth/token (OAuth2 password grant), API keys (create, list, revoke) and users
(admin)."""

from __future__ import annotations

from http import HTTPStatus

from starlette.requests import Request
from starlette.responses import Response

from server.apis.codeface.identity.protocol import NewKey, NewUser, key_view
from server.apis.decode import decode_body
from server.apis.endpoint import Endpoint, Link, Method, Operation
from server.apis.params import json_response, parse_uuid
from server.exceptions import InvalidRequest
from server.openapi.schemas import AccessToken, KeyCreated, KeyList, PasswordGrant, UserView
from server.state import principal_of, services

TOKEN_PATH = "/api/v1/auth/token"
KEYS = "/api/v1/keys"
KEY = f"{KEYS}/{{key_id}}"
USERS = "/api/v1/users"
TAG = "identity"
ADMIN_ERRORS = (HTTPStatus.BAD_REQUEST, HTTPStatus.FORBIDDEN, HTTPStatus.CONFLICT)
PASSWORD_GRANT = "password"


@Operation(Method.POST, TOKEN_PATH, "OAuth2 password grant: a JWT for a user", TAG, response=AccessToken,
           form=PasswordGrant, public=True, errors=(HTTPStatus.BAD_REQUEST, HTTPStatus.UNAUTHORIZED,
                                                    HTTPStatus.FORBIDDEN, HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                                                    HTTPStatus.TOO_MANY_REQUESTS, HTTPStatus.SERVICE_UNAVAILABLE))
async def issue_token(request: Request) -> Response:
    """OAuth2 password grant (form fields username, password, grant_type=password)."""
    try:
        form = await request.form()
    except Exception:  # malformed multipart or urlencoded body
        raise InvalidRequest("send the credentials as a form: username, password, grant_type=password") from None
    grant_type, username, password = form.get("grant_type"), form.get("username"), form.get("password")
    if grant_type not in (None, PASSWORD_GRANT):
        raise InvalidRequest("unsupported grant_type: only 'password'", param="grant_type")
    if not isinstance(username, str) or not isinstance(password, str) or not username or not password:
        raise InvalidRequest("username and password are required form fields", param="username")
    client = request.scope.get("client")
    issued = await services(request).identity.login(username, password, client[0] if client else None)
    return json_response({"access_token": issued.access_token, "token_type": "bearer",
                          "expires_in": issued.expires_in})


@Operation(Method.POST, KEYS, "Create an API key (shown once)", TAG, ok=HTTPStatus.CREATED, response=KeyCreated,
           request=NewKey, body_optional=True, errors=ADMIN_ERRORS, links=(
               Link("List", Method.GET, KEYS),
               Link("Revoke", Method.DELETE, KEY, {"key_id": "$response.body#/id"})))
async def create_key(request: Request) -> Response:
    spec = decode_body(await request.body(), NewKey)
    issued = await services(request).identity.issue_key(principal_of(request), spec)
    # The only time the key itself is shown.
    return json_response({**key_view(issued.record), "key": issued.secret}, status_code=create_key.ok)


@Operation(Method.GET, KEYS, "List the caller's API keys", TAG, response=KeyList, errors=(HTTPStatus.FORBIDDEN,))
async def list_keys(request: Request) -> Response:
    keys = await services(request).identity.list_keys(principal_of(request))
    return json_response({"object": "list", "data": [key_view(k) for k in keys]})


@Operation(Method.DELETE, KEY, "Revoke an API key", TAG, ok=HTTPStatus.NO_CONTENT,
           errors=(HTTPStatus.FORBIDDEN, HTTPStatus.NOT_FOUND))
async def revoke_key(request: Request) -> Response:
    key_id = parse_uuid(request.path_params["key_id"])
    await services(request).identity.revoke_key(principal_of(request), key_id)
    return Response(status_code=revoke_key.ok)


@Operation(Method.POST, USERS, "Create a user (admin)", TAG, ok=HTTPStatus.CREATED, response=UserView, request=NewUser,
           errors=ADMIN_ERRORS, links=(
               Link("SignIn", Method.POST, TOKEN_PATH, request_body={
                   "username": "$response.body#/username", "password": "$request.body#/password"}),))
async def create_user(request: Request) -> Response:
    spec = decode_body(await request.body(), NewUser)
    user = await services(request).identity.create_user(principal_of(request), spec.username, spec.password,
                                                        spec.is_admin, spec.models)
    return json_response({"id": str(user.id), "username": user.username, "is_admin": user.is_admin,
                          "models": user.allowed_models},
                         status_code=create_user.ok)


endpoints: tuple[Endpoint, ...] = (issue_token, create_key, list_keys, revoke_key, create_user)
