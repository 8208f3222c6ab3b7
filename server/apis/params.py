"""Query, path and header parameters, parsed the same way by every route: a malformed value is a 400 naming it (or
the 404 a malformed id deserves). A parameter is declared once: the route parses it and /openapi.json documents it
from the same declaration, limits included."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import StrEnum
from http import HTTPStatus
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from server.exceptions import InvalidRequest, NotFound

ASCII_DIGITS = frozenset("0123456789")
MAX_DIGITS = 10
# nginx's status for a client that left before the answer; nobody reads it.
CLIENT_CLOSED_REQUEST = 499


class Where(StrEnum):
    """Where a parameter travels (OpenAPI's `in`); path parameters are read off the path itself."""

    QUERY = "query"
    HEADER = "header"


@dataclass(frozen=True)
class Param:
    """An optional query or header parameter, as /openapi.json describes it."""

    name: str
    schema: dict[str, Any]
    description: str = ""
    where: Where = Where.QUERY

    def document(self) -> dict[str, Any]:
        return {"name": self.name, "in": self.where.value, "required": False, "schema": self.schema,
                **({"description": self.description} if self.description else {})}


@dataclass(frozen=True)
class IntQuery:
    """A whole-number query parameter with its bounds: the route parses it, the document states the same bounds."""

    name: str
    default: int
    low: int
    high: int

    def parse(self, request: Request) -> int:
        return int_query(request, self.name, self.default, self.low, self.high)

    def document(self) -> dict[str, Any]:
        return Param(self.name, {"type": "integer", "minimum": self.low, "maximum": self.high}).document()


def json_response(payload: object, status_code: int = HTTPStatus.OK, headers: dict[str, str] | None = None) -> Response:
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
    """ASCII digits only (str.isdigit also accepts '²', which int() refuses), at most MAX_DIGITS of them."""
    if not raw or len(raw) > MAX_DIGITS or not set(raw) <= ASCII_DIGITS:
        return None
    return int(raw)


BOOLEAN_WORDS = {"true": True, "false": False}


def bool_query(request: Request, name: str) -> bool:
    """A boolean query parameter, true or false as OpenAI's clients send it (absent: false); anything else is a
    400 naming it."""
    raw = request.query_params.get(name)
    if raw is None:
        return False
    if raw.lower() not in BOOLEAN_WORDS:
        raise InvalidRequest(f"{name} must be true or false", param=name)
    return BOOLEAN_WORDS[raw.lower()]


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


# Where a resumed stream starts: the header EventSource sends, or the same as a query parameter.
LAST_EVENT_ID_PARAMS = (
    Param("last_event_id", {"type": "string"}),
    Param("Last-Event-ID", {"type": "string", "pattern": f"^[0-9]{{1,{MAX_DIGITS}}}$"}, "resume after this event id",
          where=Where.HEADER),
)
