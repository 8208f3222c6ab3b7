"""Request ids: the client's X-Request-ID when it is a sane token, else one of ours (logs, spans, vLLM's ids)."""

from __future__ import annotations

import uuid

from starlette.types import Scope

MAX_REQUEST_ID_LENGTH = 128


def client_request_id(scope: Scope) -> str | None:
    """The client's X-Request-ID when it sent a sane token (printable ASCII, at most 128 characters)."""
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            text: str = value.decode("latin-1")
            if 0 < len(value) <= MAX_REQUEST_ID_LENGTH and value.isascii() and text.isprintable():
                return text
            break
    return None


def incoming_request_id(scope: Scope) -> str:
    """The client's X-Request-ID when it is a sane token; a new one otherwise."""
    return client_request_id(scope) or uuid.uuid4().hex
