"""Query, path and header parameters, parsed the same way by every route: a malformed value is a 400 naming it (or
the 404 a malformed id deserves)."""

from __future__ import annotations

import uuid

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from server.exceptions import InvalidRequest, NotFound

ASCII_DIGITS = frozenset("0123456789")


def json_response(payload: object, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(msgspec.json.encode(payload), status_code=status_code, headers=headers,
                    media_type="application/json")


def parse_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def path_uuid(request: Request, name: str) -> uuid.UUID:
    value = parse_uuid(request.path_params[name])
    if value is None:  # a malformed id names nothing: the same 404 as someone else's
        raise NotFound(f"no such {name.removesuffix('_id')}", param=name)
    return value


def whole_number(raw: str) -> int | None:
    """ASCII digits only (str.isdigit also accepts '²', which int() refuses), at most 10 of them."""
    if not raw or len(raw) > 10 or not set(raw) <= ASCII_DIGITS:
        return None
    return int(raw)


def int_query(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    value = whole_number(raw)
    if value is None or not low <= value <= high:
        raise InvalidRequest(f"{name} must be a whole number from {low} to {high}", param=name)
    return value


def last_event_id(request: Request) -> int:
    raw = request.headers.get("last-event-id") or request.query_params.get("last_event_id") or "0"
    value = whole_number(raw)
    if value is None:
        raise InvalidRequest("Last-Event-ID must be the id of an event this stream sent", param="Last-Event-ID")
    return value
