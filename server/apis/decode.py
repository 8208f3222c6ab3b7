"""One JSON body decoder for every route: msgspec validates types and ranges in one pass, and every failure is
an InvalidRequest naming the offending field."""

from __future__ import annotations

import re
from typing import Annotated, TypeVar

import msgspec
from msgspec import Meta

from server.exceptions import InvalidRequest

T = TypeVar("T")
_PATH_IN_ERROR = re.compile(r" - at `\$\.?(?P<path>[^`]*)`$")
_UNKNOWN_FIELD = re.compile(r"^Object (?:contains unknown|missing required) field `(?P<name>[^`]*)`")

# Bounds that the engine's wire format (int64 seeds) and the database (32-bit integers) can hold: anything
# larger is a 400 here instead of an error deep in vLLM or the database.
INT32_MAX = 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
PositiveInt = Annotated[int, Meta(ge=1, le=INT32_MAX)]
Count = Annotated[int, Meta(ge=0, le=INT32_MAX)]
Seed = Annotated[int, Meta(ge=INT64_MIN, le=INT64_MAX)]
# Text that is stored: Postgres refuses NUL characters in text columns, so they are refused here (a 400).
NO_NUL = r"^[^\x00]*$"
EMPTY_OBJECT = b"{}"


def error_param(message: str) -> str | None:
    """The field a msgspec validation message names: its path, and the unknown or missing field's name if that is the
    fault."""
    at = _PATH_IN_ERROR.search(message)
    path = at.group("path") if at else ""
    unknown = _UNKNOWN_FIELD.match(message)
    if unknown:
        return f"{path}.{unknown.group('name')}" if path else unknown.group("name")
    return path or None


def decode_body(body: bytes, schema: type[T], *, empty_means: bytes | None = EMPTY_OBJECT) -> T:
    """Decode and validate a JSON body; every failure is an InvalidRequest naming the field as `param`.

    `empty_means`: what an empty body stands for (an object of defaults), or None to refuse it.
    """
    if not body.strip():
        if empty_means is None:
            raise InvalidRequest("the request body is empty; send a JSON object")
        body = empty_means
    try:
        return msgspec.json.decode(body, type=schema)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(str(exc), param=error_param(str(exc))) from None
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidRequest("the request body is nested too deeply") from None
